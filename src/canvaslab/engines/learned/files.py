"""Where the learned erasers' model files are and what kind each is, without torch and without reading weights.

Users coming from IOPaint (or lama-cleaner) already have `big-lama.pt` and `migan_traced.pt` in torch
hub's cache, `<TORCH_HOME or $XDG_CACHE_HOME/torch or ~/.cache/torch>/hub/checkpoints` (IOPaint's
`--model-dir` sets XDG_CACHE_HOME), so that folder is searched when no model is given, and its file
names work as model names (`--model big-lama`). Nothing is ever downloaded.

Kinds of file (`classify`):
- `lama-checkpoint`: LaMa's own release, a folder with `config.yaml` and `models/best.ckpt` (a
  PyTorch Lightning checkpoint whose `generator.*` tensors are the network), or that `.ckpt` itself;
- `torchscript`: a traced module (IOPaint's `big-lama.pt`: forward(image, mask) -> inpainted, [0, 1];
  `migan_traced.pt`: forward(x) on MI-GAN's 4-channel input);
- `state-dict`: MI-GAN's released generator weights (`migan_512_places2.pt`, ...);
- `onnx`: MI-GAN's ONNX export of the generator, or its whole pipeline (`migan_pipeline_v2.onnx`).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from canvaslab.errors import InputError, ModelNotAvailableError


@dataclass(frozen=True)
class KnownFile:
    name: str  # what --model accepts
    engine: str
    filename: str
    resolution: int | None  # px the network was trained at
    licence: str
    description: str


KNOWN_FILES: tuple[KnownFile, ...] = (
    KnownFile("big-lama", "lama", "big-lama.pt", 256, "Apache-2.0",
              "big-LaMa (Places2), TorchScript as IOPaint/lama-cleaner cache it"),
    KnownFile("anime-lama", "lama", "anime-manga-big-lama.pt", 256, "see its source",
              "big-LaMa fine-tuned on anime/manga, TorchScript from IOPaint's cache"),
    KnownFile("migan", "migan", "migan_traced.pt", 512, "MIT",
              "MI-GAN 512 (Places2), TorchScript as IOPaint caches it"),
    KnownFile("migan-pipeline", "migan", "migan_pipeline_v2.onnx", 512, "MIT",
              "MI-GAN's released ONNX pipeline (crops around the mask itself; needs onnxruntime)"),
    KnownFile("migan-512-places2", "migan", "migan_512_places2.pt", 512, "MIT", "MI-GAN's released 512 px generator"),
    KnownFile("migan-256-places2", "migan", "migan_256_places2.pt", 256, "MIT", "MI-GAN's released 256 px generator"),
    KnownFile("migan-256-ffhq", "migan", "migan_256_ffhq.pt", 256, "MIT", "MI-GAN's released 256 px generator (faces)"),
)

# What a missing model's message tells the user to provide, per engine.
_WHAT = {
    "lama": "a LaMa folder with config.yaml and models/best.ckpt, its best.ckpt, or IOPaint's big-lama.pt",
    "migan": "MI-GAN's migan_512_places2.pt, an ONNX export (migan_pipeline_v2.onnx), or IOPaint's migan_traced.pt",
}


def hub_checkpoints() -> Path:
    """torch hub's download folder, found as torch.hub.get_dir() finds it (without importing torch)."""
    if os.environ.get("TORCH_HOME"):
        root = Path(os.environ["TORCH_HOME"]).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "torch"
    return root / "hub" / "checkpoints"


def known(engine: str) -> list[KnownFile]:
    return [entry for entry in KNOWN_FILES if entry.engine == engine]


def find_known(entry: KnownFile) -> Path | None:
    path = hub_checkpoints() / entry.filename
    return path if path.is_file() else None


def resolve_model(engine: str, model: str | None) -> Path:
    """The file or folder `model` names for `engine`: a path, a known name in the hub cache, or (None) the
    first known file found there; ModelNotAvailableError in one sentence otherwise."""
    cache = hub_checkpoints()
    if model is None:
        for entry in known(engine):
            if (found := find_known(entry)) is not None:
                return found
        raise ModelNotAvailableError(
            f"no {engine} model found in {cache} (IOPaint's cache): pass --model PATH to {_WHAT[engine]}"
        )
    path = Path(model).expanduser()
    if path.exists():
        return path
    for entry in known(engine):
        if model in (entry.name, entry.filename, Path(entry.filename).stem):
            if (found := find_known(entry)) is not None:
                return found
            raise ModelNotAvailableError(f"{entry.filename} is not in {cache}: copy it there, or pass --model PATH to {_WHAT[engine]}")
    names = ", ".join(entry.name for entry in known(engine))
    raise ModelNotAvailableError(f"{model} is neither a file nor a known {engine} model ({names}): pass --model PATH to {_WHAT[engine]}")


def lama_checkpoint_files(path: Path) -> tuple[Path, Path] | None:
    """(checkpoint, config.yaml) of a LaMa release folder or .ckpt file; None when `path` is neither."""
    if path.is_dir():
        config = path / "config.yaml"
        candidates = [path / "models" / "best.ckpt", path / "best.ckpt", *sorted((path / "models").glob("*.ckpt")),
                      *sorted(path.glob("*.ckpt"))]
        checkpoint = next((c for c in candidates if c.is_file()), None)
        if checkpoint is None:
            raise ModelNotAvailableError(f"{path} has no models/best.ckpt: a LaMa folder holds config.yaml and models/best.ckpt")
        if not config.is_file():
            raise ModelNotAvailableError(f"{path} has no config.yaml: LaMa needs the config.yaml that came with its checkpoint")
        return checkpoint, config
    if path.suffix == ".ckpt":
        for config in (path.parent / "config.yaml", path.parent.parent / "config.yaml"):
            if config.is_file():
                return path, config
        raise ModelNotAvailableError(
            f"no config.yaml beside {path.name} or one folder up: put the config.yaml of its LaMa release there"
        )
    return None


def classify(path: Path) -> str:
    """lama-checkpoint, torchscript, state-dict or onnx (see the module docstring); InputError otherwise."""
    if path.is_dir() or path.suffix == ".ckpt":
        return "lama-checkpoint"
    if path.suffix == ".onnx":
        return "onnx"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"{path} is not a PyTorch file (a .pt zip archive) nor an ONNX model") from None
    # TorchScript archives carry their compiled code and constants; torch.save archives only data.pkl.
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return "torchscript"
    return "state-dict"
