"""Mask models: which ones exist, where their files are, and loading them once.

A mask model is a transformers folder (config.json, weights, processor files) given as a local
folder, a hub id already in the Hugging Face cache (HF_HOME), or one of the aliases below. Nothing is
ever downloaded here: a model that is not on disk is a one-line `ModelNotAvailableError` naming the
command that fetches it on a connected machine.

The folder's `model_type` says what it does (`KIND_OF`):
- "sam": Segment Anything (SAM, SAM-HQ, SAM 2): points and boxes -> masks (masks.sam);
- "clipseg": CLIPSeg: words -> a per-pixel score (masks.words);
- "detector": an open-vocabulary detector (OWL-ViT, OWLv2, Grounding DINO): words -> boxes, which SAM
  turns into masks (masks.words).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canvaslab.errors import InputError, ModelNotAvailableError

# Aliases for the released checkpoints in transformers' format (the hub ids transformers documents).
ALIASES: dict[str, str] = {
    "sam": "facebook/sam-vit-base",
    "sam-large": "facebook/sam-vit-large",
    "sam-huge": "facebook/sam-vit-huge",
    "sam-hq": "syscv-community/sam-hq-vit-base",
    "sam-hq-huge": "syscv-community/sam-hq-vit-huge",
    "sam2": "facebook/sam2.1-hiera-tiny",
    "sam2-large": "facebook/sam2.1-hiera-large",
    "clipseg": "CIDAS/clipseg-rd64-refined",
    "owlvit": "google/owlvit-base-patch32",
    "owlv2": "google/owlv2-base-patch16-ensemble",
    "grounding-dino": "IDEA-Research/grounding-dino-tiny",
}
DEFAULT_SAM = "sam"
DEFAULT_TEXT = "clipseg"

# transformers model_type -> what the model does
KIND_OF: dict[str, str] = {
    "sam": "sam", "sam_hq": "sam", "sam2": "sam",
    "clipseg": "clipseg",
    "owlvit": "detector", "owlv2": "detector", "grounding-dino": "detector", "mm-grounding-dino": "detector",
}
KIND_NAMES = {"sam": "a Segment Anything model", "clipseg": "a CLIPSeg model", "detector": "an object detector"}
MAX_LOADED = 3  # models kept in memory (a SAM, a text model, a detector)


@dataclass(frozen=True)
class MaskModel:
    """A resolved mask model: what the user named, its folder, its transformers type and kind."""

    name: str
    folder: Path
    model_type: str
    kind: str


def resolve(name: str, *, want: str | None = None) -> MaskModel:
    """The folder and kind of an alias, folder or cached hub id; `want` ("sam", "clipseg", "detector",
    or "text" for either of the last two) refuses a model of another kind."""
    hub_id = ALIASES.get(name, name)
    folder = Path(name).expanduser() if name not in ALIASES else None
    if folder is None or not folder.is_dir():
        folder = _cached(hub_id)
    if folder is None:
        raise ModelNotAvailableError(_missing(name, hub_id))
    model_type = _model_type(folder, name)
    kind = KIND_OF.get(model_type)
    if kind is None:
        raise InputError(f"{name} is a {model_type!r} model, which makes no masks: use a SAM, SAM-HQ, SAM 2, "
                         f"CLIPSeg, OWL-ViT, OWLv2 or Grounding DINO model ({', '.join(ALIASES)})")
    if want is not None and kind != want and not (want == "text" and kind in ("clipseg", "detector")):
        needed = "a CLIPSeg model or an object detector" if want == "text" else KIND_NAMES[want]
        raise InputError(f"{name} is {KIND_NAMES[kind]}, but this needs {needed}")
    return MaskModel(name, folder.resolve(), model_type, kind)


def _cached(hub_id: str) -> Path | None:
    """A hub id's snapshot folder in the local Hugging Face cache, if its config.json is there."""
    if hub_id.count("/") != 1 or hub_id.startswith((".", "/", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json")
    except (ValueError, OSError):  # not a valid hub id: simply not a cached one
        return None
    return Path(found).parent if isinstance(found, str) else None


def _missing(name: str, hub_id: str) -> str:
    if hub_id.count("/") == 1 and not Path(name).expanduser().exists() and not name.startswith((".", "/", "~")):
        return (f"mask model {name} ({hub_id}) is not in the Hugging Face cache: on a connected machine run "
                f"`hf download {hub_id}` (then copy HF_HOME here), or pass a local folder")
    return (f"mask model {name} was not found: pass a transformers folder (config.json + weights), a hub id in "
            f"the Hugging Face cache, or an alias ({', '.join(ALIASES)})")


def _model_type(folder: Path, name: str) -> str:
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelNotAvailableError(f"mask model {name} has no config.json in {folder}") from None
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"mask model {name}: cannot read {folder / 'config.json'} ({exc})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str):
        raise ModelNotAvailableError(f"mask model {name}: {folder / 'config.json'} names no model_type")
    return model_type


def resolve_device(device: str) -> str:
    """auto -> cuda, mps or cpu; an unavailable device is a one-line error (the engines' rule)."""
    from canvaslab.engines.diffusion.models import resolve_device as engines_device

    return engines_device(device)  # type: ignore[arg-type]


# -- loaded models, kept once per process ---------------------------------------------------------

_loaded: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_lock = threading.Lock()


def loaded(model: MaskModel, device: str, build: Callable[[MaskModel, str], Any]) -> Any:
    """`build(model, device)`, once per (folder, kind, device) while it stays among the last MAX_LOADED."""
    key = (str(model.folder), model.kind, device)
    with _lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars on stderr at every load
    built = build(model, device)
    with _lock:
        _loaded[key] = built
        while len(_loaded) > MAX_LOADED:
            _loaded.popitem(last=False)
    return built


def load_failure(model: MaskModel, exc: BaseException) -> ModelNotAvailableError:
    """A transformers loading error as one line (missing or broken weights, processor files, tokenizer)."""
    detail = " ".join(str(exc).split())[:240]
    return ModelNotAvailableError(f"mask model {model.name} in {model.folder} could not be loaded: {detail}")
