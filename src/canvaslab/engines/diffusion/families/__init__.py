"""The model families the diffusion engine drives: adding one means one line here and one module.

Each entry is a name and a lazy `module:Class` (see `base.Family` for what a family states). Modules
import no torch or diffusers, so recognising a model stays light; order matters only where two
families could claim the same files (none do today: each checks its own pipeline or tensor names).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from canvaslab.engines.diffusion.families.base import CheckpointHeader, Family, ModelAlias
from canvaslab.errors import InputError

FAMILIES: dict[str, str] = {
    "sd1": "canvaslab.engines.diffusion.families.sd:SD1",
    "sd2": "canvaslab.engines.diffusion.families.sd:SD2",
    "sdxl": "canvaslab.engines.diffusion.families.sd:SDXL",
    "sd3": "canvaslab.engines.diffusion.families.sd3:SD3",
    "flux": "canvaslab.engines.diffusion.families.flux:Flux",
    "flux-kontext": "canvaslab.engines.diffusion.families.flux_kontext:FluxKontext",
    "qwen-image": "canvaslab.engines.diffusion.families.qwen_image:QwenImage",
    "flux2": "canvaslab.engines.diffusion.families.flux2:Flux2",
    "z-image": "canvaslab.engines.diffusion.families.z_image:ZImage",
}


@cache
def family(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise InputError(f"unknown model family {name!r}: canvaslab knows {', '.join(FAMILIES)}")
    module, _, attribute = FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def all_families() -> list[type[Family]]:
    return [family(name) for name in FAMILIES]


def all_aliases() -> dict[str, ModelAlias]:
    return {alias.name: alias for fam in all_families() for alias in fam.aliases}


def family_of_folder(folder: Path, index: Mapping[str, Any]) -> type[Family] | None:
    """The family whose models look like this diffusers folder, or None."""
    return next((fam for fam in all_families() if fam.claims_folder(folder, index)), None)


def family_of_checkpoint(header: CheckpointHeader) -> type[Family] | None:
    """The family whose single files have these tensor names and shapes, or None."""
    return next((fam for fam in all_families() if fam.claims_checkpoint(header)), None)


__all__ = ["FAMILIES", "Family", "all_aliases", "all_families", "family", "family_of_checkpoint", "family_of_folder"]
