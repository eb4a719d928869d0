"""Engine registry: names -> classes, imported lazily so heavy back ends load only when used."""

from __future__ import annotations

import importlib
from functools import lru_cache

from canvaslab.engines.base import Engine, EngineOptions, Generation
from canvaslab.errors import InputError

# name -> "module:Class". Adding a back end means one line here and one class.
_REGISTRY: dict[str, str] = {
    "patchmatch": "canvaslab.engines.classical.engines:PatchMatchEngine",
    "telea": "canvaslab.engines.classical.engines:TeleaEngine",
    "ns": "canvaslab.engines.classical.engines:NavierStokesEngine",
    "diffusion": "canvaslab.engines.diffusion.engine:DiffusionEngine",
    "unified": "canvaslab.engines.unified.engine:UnifiedEngine",
    "lama": "canvaslab.engines.learned.engine:LamaEngine",
    "migan": "canvaslab.engines.learned.engine:MiganEngine",
}

DEFAULT_ENGINE = "patchmatch"


def engine_names() -> list[str]:
    return list(_REGISTRY)


def engine_class(name: str) -> type[Engine]:
    if name not in _REGISTRY:
        raise InputError(f"unknown engine {name!r}: choose one of {', '.join(_REGISTRY)}")
    module_name, _, class_name = _REGISTRY[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if getattr(cls, "name", None) != name:
        raise TypeError(f"engine class {class_name} is registered as {name!r} but declares name {getattr(cls, 'name', None)!r}")
    return cls


@lru_cache(maxsize=None)
def get_engine(name: str) -> Engine:
    """The shared instance of engine `name` (engines may hold loaded models, so build each once)."""
    return engine_class(name)()


__all__ = ["DEFAULT_ENGINE", "Engine", "EngineOptions", "Generation", "engine_class", "engine_names", "get_engine"]
