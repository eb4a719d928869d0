"""Diffusion models: which model a name means, what it is, and how to load it, offline first.

Three steps, each usable on its own:

1. `resolve_source(name)` turns an alias (`sd15-inpaint`), a hub id, a local diffusers folder or a
   single `.safetensors`/`.ckpt` file into a `ModelSource`. Hub ids are looked up in the local
   Hugging Face cache first; when downloads are off (`HF_HUB_OFFLINE=1` or `local_files_only`) a model
   that is not there fails at once with `ModelNotAvailableError`, never after a library's retries.
2. `detect(source)` reads config files (or a single file's tensor header, without loading weights),
   asks the family registry (`families/`) which family the model belongs to, and lets that family
   report the model kind (its denoiser's input channels and what they mean), the prediction type and
   the native resolution.
3. `load_pipeline(source, task=...)` picks the diffusers pipeline class the family names for
   (kind, task), loads it in the asked dtype on the asked device, and keeps it in a small cache.

Only `load_pipeline` (and reading a `.ckpt` header) imports torch and diffusers, so resolving and
detecting stay light.

Precision policy (documented in `load_pipeline`): fp16 is refused on CPU (about 7x slower there than
fp32, and some CPU kernels lack it); `dtype="auto"` gives fp16 on CUDA/MPS and fp32 on CPU. In fp16 a
VAE whose config sets `force_upcast` (the SD VAEs do: they can overflow to NaN, i.e. black images) is
decoded in fp32: SDXL pipelines do that themselves, SD 1.x/2.x pipelines get their VAE kept in fp32
with casts at its boundaries.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from canvaslab.core.notices import notice
from canvaslab.engines.diffusion import families
from canvaslab.engines.diffusion.families.base import (
    CheckpointHeader,
    Family,
    ModelAlias,
    ModelInfo,
    Task,
    config_file,
    one_line,
    read_json,
)
from canvaslab.engines.diffusion.families.sd import FRAME_EDIT_PIPELINE, StableDiffusion, kind_of_channels
from canvaslab.errors import CanvaslabError, InputError, ModelNotAvailableError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

DType = Literal["auto", "fp32", "fp16", "bf16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Offload = Literal["model", "sequential"]

TASKS = ("inpaint", "txt2img", "edit")
DTYPES = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
OFFLOADS = (None, "model", "sequential")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".gguf")


# -- aliases -----------------------------------------------------------------------------------

# Every family's aliases (families/<family>.py declares its own).
ALIASES: dict[str, ModelAlias] = families.all_aliases()


# -- sources -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are.

    `format` is "folder" (a diffusers folder on disk, including a cached hub snapshot), "single_file"
    (an original-layout checkpoint) or "hub" (a hub id to download, only when downloads are allowed).
    """

    name: str  # as the user gave it, for messages
    format: Literal["folder", "single_file", "hub"]
    path: Path | None = None
    hub_id: str | None = None
    config: str | None = None  # single files: local diffusers folder or hub id holding the component configs
    config_from_user: bool = False  # an explicit config outranks our guesses about the checkpoint
    cache_dir: str | None = None
    local_files_only: bool = False

    @property
    def location(self) -> str:
        return str(self.path) if self.path is not None else str(self.hub_id)


def resolve_source(
    name_or_path: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
) -> ModelSource:
    """Turn an alias, hub id, diffusers folder or single file into a `ModelSource`.

    `config` (single files only) is a local diffusers folder, alias or hub id with the component
    configs and tokenizers; without it the family's standard repo is used (from the cache when
    offline). `local_files_only=None` follows `HF_HUB_OFFLINE`. A bare name that is an alias means
    the alias even if a file or folder of that name exists here (write `./name` for those).
    """
    name = str(name_or_path)
    cache = str(cache_dir) if cache_dir is not None else None
    offline = downloads_disabled(local_files_only)
    path = Path(name).expanduser()
    if path.is_file() and name not in ALIASES:
        return _single_file_source(name, path, config, cache, offline)
    if config is not None:
        raise InputError(f"config= only applies to single .safetensors/.ckpt files, and {name!r} is not one")
    if name in ALIASES:
        return _hub_source(name, ALIASES[name].hub_id, cache, offline)
    if path.is_dir():
        check_folder(path, name)
        return ModelSource(name, "folder", path=path.resolve(), cache_dir=cache, local_files_only=offline)
    if _looks_like_path(name):
        raise ModelNotAvailableError(
            f"model path {name} does not exist; give an existing diffusers folder, a .safetensors/.ckpt file, "
            f"a hub id (owner/name) or an alias ({', '.join(ALIASES)})"
        )
    if _HUB_ID.fullmatch(name):
        return _hub_source(name, name, cache, offline)
    raise ModelNotAvailableError(
        f"unknown model {name!r}: not an alias ({', '.join(ALIASES)}), an existing path or a hub id (owner/name)"
    )


_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _looks_like_path(name: str) -> bool:
    """A name meant as a path (so a missing one is reported as a missing file, not as a hub id)."""
    path = Path(name).expanduser()
    return (
        name.startswith((".", "/", "~", "\\"))
        or path.suffix in SINGLE_FILE_SUFFIXES
        or len(path.parts) > 2
        or (len(path.parts) == 2 and Path(path.parts[0]).is_dir())
        or bool(re.match(r"[A-Za-z]:[\\/]", name))
    )


def downloads_disabled(local_files_only: bool | None = None) -> bool:
    """True when nothing may be fetched: `local_files_only`, or `HF_HUB_OFFLINE` set (now or at hub import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(local_files_only) or env or constants.HF_HUB_OFFLINE


def _hub_cache(cache_dir: str | None) -> str:
    from huggingface_hub import constants

    return cache_dir or constants.HF_HUB_CACHE


def cached_snapshot(hub_id: str, cache_dir: str | None = None) -> Path | None:
    """The cached snapshot folder of `hub_id` (its `main` revision), or None; touches no network.

    It looks for `model_index.json` rather than asking `snapshot_download(local_files_only=True)`:
    the latter reports a snapshot incomplete when any repo file is missing, yet diffusers downloads
    only the files a pipeline needs. `check_folder` then checks exactly those.
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "model_index.json", cache_dir=cache_dir)
    except (ValueError, OSError):  # an id the hub would reject is simply not cached
        return None
    return Path(found).parent if isinstance(found, str) else None


def _hub_source(name: str, hub_id: str, cache_dir: str | None, offline: bool) -> ModelSource:
    snapshot = cached_snapshot(hub_id, cache_dir)
    label = f"{name!r} ({hub_id})" if name != hub_id else repr(name)
    if snapshot is not None:
        problem = folder_problem(snapshot)
        if problem is None:
            return ModelSource(name, "folder", path=snapshot, hub_id=hub_id, cache_dir=cache_dir, local_files_only=offline)
        if offline:
            raise ModelNotAvailableError(
                f"model {label} is only partly in the Hugging Face cache ({problem}) and downloads are off; "
                f"run `canvaslab models pull {name}` on a connected machine and copy its HF_HOME cache here"
            )
    elif offline:
        raise ModelNotAvailableError(
            f"model {label} is not in the Hugging Face cache at {_hub_cache(cache_dir)} and downloads are off; "
            f"run `canvaslab models pull {name}` on a connected machine and copy its HF_HOME cache here, "
            "or pass a local diffusers folder or .safetensors file"
        )
    return ModelSource(name, "hub", hub_id=hub_id, cache_dir=cache_dir, local_files_only=False)


# -- folder checks -----------------------------------------------------------------------------

# Components canvaslab never loads (the safety checker is switched off), so their absence is fine.
_SKIPPED_COMPONENTS = {"safety_checker", "feature_extractor", "image_encoder"}
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.index.json", "*.gguf")
# tokenizer_config.json alone is not enough: transformers 5 then builds a 2-token tokenizer, silently.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")
_DENOISERS = ("unet", "transformer")


def folder_problem(path: Path) -> str | None:
    """What makes `path` unusable as a diffusers pipeline folder, or None if it looks complete."""
    index_file = path / "model_index.json"
    if not index_file.is_file():
        return "no model_index.json"
    try:
        index = read_json(index_file)
    except (OSError, ValueError):
        return "model_index.json is not valid JSON"
    if not any(name in index for name in _DENOISERS):
        return f"no UNet or transformer (it is a {index.get('_class_name', 'non-diffusion')} pipeline)"
    for component, spec in index.items():
        if component.startswith("_") or component in _SKIPPED_COMPONENTS:
            continue
        if not (isinstance(spec, list) and len(spec) == 2 and spec[0] is not None):
            continue  # a plain option (e.g. requires_safety_checker) or a component saved as null
        problem = _component_problem(path / component, component, str(spec[1]))
        if problem:
            return problem
    return None


def _component_problem(folder: Path, component: str, class_name: str) -> str | None:
    if not folder.is_dir():
        return f"{component}/ is missing"
    if component.startswith("tokenizer") or class_name.endswith(("Tokenizer", "TokenizerFast")):
        return None if any((folder / f).is_file() for f in _TOKENIZER_FILES) else f"{component}/ has no tokenizer files"
    if component == "scheduler" or class_name.endswith("Scheduler"):
        return None if (folder / "scheduler_config.json").is_file() else f"{component}/scheduler_config.json is missing"
    if class_name.endswith(("Processor", "FeatureExtractor")):  # configs only (Qwen-Image-Edit's processor)
        return None if next(folder.glob("*.json"), None) else f"{component}/ has no processor configs"
    if not (folder / "config.json").is_file():
        return f"{component}/config.json is missing"
    if not any(next(folder.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        return f"{component}/ has no weights"
    return None


def check_folder(path: Path, name: str) -> None:
    problem = folder_problem(path)
    if problem:
        label = f"{path} ({name})" if name != str(path) else str(path)
        raise ModelNotAvailableError(
            f"model folder {label} is not a usable diffusers folder: {problem}; re-download it "
            "(`canvaslab models pull NAME`) or pass a complete diffusers folder or a single .safetensors file"
        )


def folder_family(folder: Path, name: str) -> type[Family]:
    """The family of a diffusers folder (from model_index.json and its denoiser's config)."""
    index = config_file(folder, "model_index.json")
    found = families.family_of_folder(folder, index)
    if found is None:
        raise InputError(
            f"model {name!r} at {folder} is a {index.get('_class_name', 'diffusers')} pipeline, which no canvaslab "
            f"family drives (known: {', '.join(families.FAMILIES)})"
        )
    return found


# -- single files ------------------------------------------------------------------------------


def read_checkpoint_header(path: Path) -> CheckpointHeader:
    """Tensor names and shapes of a `.safetensors` (from its JSON header) or `.ckpt` (memory-mapped)."""
    stat = path.stat()
    return _cached_header(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _cached_header(path: str, mtime_ns: int, size: int) -> CheckpointHeader:
    # Resolving and detecting both read the header; the key changes when the file does.
    try:
        if path.endswith(".safetensors"):
            return _read_safetensors_header(Path(path))
        if path.endswith(".gguf"):
            return _read_gguf_header(Path(path))
        return _read_ckpt_header(Path(path))
    except (OSError, ValueError, RuntimeError, struct.error) as exc:
        raise ModelNotAvailableError(f"checkpoint {path} could not be read ({one_line(exc)}); is it complete?") from None


def _read_safetensors_header(path: Path) -> CheckpointHeader:
    # Layout: 8-byte little-endian header length, then a JSON header; the tensors follow and stay unread.
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100_000_000:
            raise ValueError("header length is implausible")
        header = json.loads(fh.read(length))
    metadata = header.pop("__metadata__", None) or {}
    return CheckpointHeader({k: tuple(v["shape"]) for k, v in header.items()}, metadata)


def _read_gguf_header(path: Path) -> CheckpointHeader:
    """Tensor names and (torch-order) shapes of a GGUF file; the quantised data stays on disk (memory-mapped)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise InputError(f"{path} is a GGUF file: reading it needs the gguf package (pip install 'canvaslab[gguf]')") from None
    reader = GGUFReader(path)
    # GGUF stores dimensions fastest-first (ggml's ne); torch lists them slowest-first
    return CheckpointHeader({t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}, {})


def _read_ckpt_header(path: Path) -> CheckpointHeader:
    import torch

    try:  # zip-format checkpoints can be memory-mapped, so only touched pages are read
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # legacy (pre-zip) format: no mmap
        data = torch.load(path, map_location="cpu", weights_only=True)
    step = data.get("global_step") if isinstance(data, dict) else None
    while isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    shapes = {k: tuple(v.shape) for k, v in data.items() if hasattr(v, "shape")}
    return CheckpointHeader(shapes, {}, int(step) if isinstance(step, int) else None)


def checkpoint_family(header: CheckpointHeader, path: Path) -> type[Family]:
    """The family a single file belongs to, from its tensor names and shapes."""
    found = families.family_of_checkpoint(header)
    if found is not None:
        return found
    if "model.diffusion_model.input_blocks.0.0.weight" in header.shapes:
        raise InputError(f"cannot tell which Stable Diffusion family {path} belongs to; pass config=<a diffusers folder of the same model>")
    raise InputError(
        f"{path} is not a Stable Diffusion checkpoint (no model.diffusion_model weights) nor a transformer of a "
        "family canvaslab knows; LoRA, VAE and text-encoder files are not models on their own"
    )


def _single_file_source(
    name: str, path: Path, config: str | os.PathLike[str] | None, cache_dir: str | None, offline: bool
) -> ModelSource:
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise InputError(f"{path} is neither a diffusers folder nor a .safetensors/.ckpt/.gguf checkpoint")
    common = dict(path=path.resolve(), cache_dir=cache_dir, local_files_only=offline)
    header = read_checkpoint_header(path)
    family = checkpoint_family(header, path)
    if config is not None:
        resolved = _resolve_config(str(config), cache_dir, offline)
        _check_config_family(resolved, family, path)
        return ModelSource(name, "single_file", config=resolved, config_from_user=True, **common)
    if not issubclass(family, StableDiffusion):
        raise ModelNotAvailableError(family.needs_base_message(path))
    kind = family.checkpoint_kind(header, path)
    alias = family.default_configs.get(kind)
    if alias is None:
        raise ModelNotAvailableError(
            f"single file {path} ({family.name} {kind}) has no standard config to pair with; pass config=<local diffusers folder>"
        )
    try:
        resolved = _resolve_config(alias, cache_dir, offline)
    except ModelNotAvailableError:
        raise ModelNotAvailableError(
            f"single file {path} needs the {alias} component configs (json + tokenizer files), which are not cached "
            f"and downloads are off; pass config=<local diffusers folder> or run `canvaslab models pull {alias}` "
            "on a connected machine and copy its HF_HOME cache here"
        ) from None
    return ModelSource(name, "single_file", config=resolved, **common)


def _check_config_family(config: str, family: type[Family], path: Path) -> None:
    """A config from another family would only fail deep in diffusers with a shape mismatch."""
    folder = Path(config)
    if not folder.is_dir():
        return  # a hub id to download: nothing to compare yet
    config_family = families.family_of_folder(folder, config_file(folder, "model_index.json"))
    if config_family is not None and config_family.name != family.name:
        raise InputError(
            f"{path} is an {family.name} checkpoint but config {folder} is an {config_family.name} model; "
            "pass a config of the same family"
        )


def _resolve_config(config: str, cache_dir: str | None, offline: bool) -> str:
    """A local folder with the component configs, or (downloads allowed) a hub id diffusers will fetch."""
    path = Path(config).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotAvailableError(f"config folder {path} has no model_index.json; pass a diffusers pipeline folder")
        return str(path.resolve())
    hub_id = ALIASES[config].hub_id if config in ALIASES else config
    if not _HUB_ID.fullmatch(hub_id):
        raise ModelNotAvailableError(f"config {config!r} is neither an existing diffusers folder nor a hub id (owner/name)")
    snapshot = cached_snapshot(hub_id, cache_dir)
    if snapshot is not None:
        return str(snapshot)
    if offline:
        raise ModelNotAvailableError(
            f"config {config!r} ({hub_id}) is not in the Hugging Face cache at {_hub_cache(cache_dir)} and downloads are off; "
            f"run `canvaslab models pull {config}` on a connected machine, or pass a local diffusers folder"
        )
    return hub_id


# -- detection ---------------------------------------------------------------------------------


def detect(source: ModelSource) -> ModelInfo:
    """Family, model kind, prediction type and native resolution, read from configs or tensor shapes."""
    if source.format == "single_file":
        assert source.path is not None
        header = read_checkpoint_header(source.path)
        config = Path(source.config) if source.config and Path(source.config).is_dir() else None
        return checkpoint_family(header, source.path).detect_checkpoint(
            source.path, header, config, source.config_from_user
        )
    folder = source.path if source.path is not None else _download_configs(source)
    return folder_family(folder, source.name).detect_folder(folder, config_file(folder, "model_index.json"), source.name)


def _download_configs(source: ModelSource) -> Path:
    """Fetch only the json configs of a hub model (downloads are allowed for "hub" sources)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source.hub_id, cache_dir=source.cache_dir, allow_patterns=["*.json", "*/*.json"]))
    except Exception as exc:  # hub/network failures of every kind end as one line naming the model
        raise ModelNotAvailableError(
            f"model {source.name!r} ({source.hub_id}) is not on this machine and could not be downloaded "
            f"({one_line(exc)}); pass a local diffusers folder or .safetensors file, or run "
            f"`canvaslab models pull {source.name}` on a connected machine and copy its HF_HOME cache here"
        ) from exc


# -- pipeline choice ---------------------------------------------------------------------------

_OWN_PIPELINES = {FRAME_EDIT_PIPELINE: "canvaslab.engines.diffusion.frames"}  # class name -> module


def pipeline_class_name(info: ModelInfo, task: Task, *, label: str = "the model") -> str:
    """The diffusers pipeline class that runs `task` with a model described by `info`."""
    return families.family(info.family).pipeline_class_name(info, task, label=label)


def pipeline_class(name: str) -> type:
    """The pipeline class called `name`: canvaslab's own (multi-frame editing) or a diffusers one."""
    import importlib

    import diffusers

    module = importlib.import_module(_OWN_PIPELINES[name]) if name in _OWN_PIPELINES else diffusers
    return getattr(module, name)


# -- loading -----------------------------------------------------------------------------------


@dataclass
class _CacheEntry:
    pipelines: dict[str, Any]  # pipeline class name -> pipeline; all share the same modules
    attention_slicing: bool = False
    vae_tiling: bool = False


MAX_CACHED_MODELS = 1  # a loaded SDXL is ~7 GB in fp16: keep one model, not a zoo
_cache: OrderedDict[tuple, _CacheEntry] = OrderedDict()
_cache_lock = threading.Lock()


def clear_pipeline_cache() -> None:
    """Forget loaded pipelines and remembered model look-ups (e.g. after changing files in place)."""
    with _cache_lock:
        _cache.clear()
    _resolved.cache_clear()


def load_pipeline(
    source: ModelSource | str | os.PathLike[str],
    *,
    task: Task = "inpaint",
    dtype: DType = "auto",
    device: Device = "auto",
    offload: Offload | None = None,
    attention_slicing: bool = False,
    vae_tiling: bool = False,
    config: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    in_channels: int | None = None,
    quantize: str | None = None,
) -> DiffusionPipeline:
    """Load (or reuse) the diffusers pipeline that runs `task` with `source`.

    `source` is a `ModelSource` or anything `resolve_source` takes (then `config`, `cache_dir` and
    `local_files_only` are passed on). Pipelines are cached by source, dtype, device and offload; a
    second call reuses the loaded modules, also for another task (`from_pipe` shares them).

    dtype: "auto" = fp16 on CUDA/MPS, fp32 on CPU. fp16 on CPU is refused (InputError): it is ~7x
    slower than fp32 there; use fp32 or bf16. In fp16, a VAE with `force_upcast` in its config decodes
    in fp32, which avoids the NaN/black images SD VAEs can give in fp16.
    offload: "model" (whole models move to the GPU in turn) or "sequential" (layer by layer; slowest,
    least memory); both need CUDA. attention_slicing and vae_tiling trade speed for memory.
    in_channels: choose the pipeline class as if the UNet took this many input channels (a widened
    LoRA, see lora.py, swaps in a wider conv_in before the pipeline runs).
    dtype "auto" on a GPU is the family's own (bf16 for the FLUX/Qwen/Z-Image transformers).
    quantize: "bnb-4bit", "bnb-8bit" (bitsandbytes) or "torchao-int8" for the denoiser; CUDA only
    (elsewhere refused in one line; GGUF files are the quantised weights that run on any device).
    """
    check_inputs(task=task, dtype=dtype, device=device, offload=offload)
    if isinstance(source, ModelSource):
        if config is not None or cache_dir is not None or local_files_only is not None:
            raise InputError("config, cache_dir and local_files_only belong to resolve_source; a ModelSource already has them")
        info = detect(source)
    else:
        source, info = resolve_and_detect(source, config=config, cache_dir=cache_dir, local_files_only=local_files_only)
    if in_channels is not None and in_channels != info.in_channels:
        kind, frames = kind_of_channels(in_channels, f"{source.name!r} with a widening LoRA")
        info = dataclasses.replace(info, kind=kind, in_channels=in_channels, condition_frames=frames)
    class_name = pipeline_class_name(info, task, label=f"model {source.name!r}")
    target = resolve_device(device)
    family = families.family(info.family)
    torch_dtype = resolve_dtype(family.gpu_dtype if dtype == "auto" and target != "cpu" else dtype, target)  # type: ignore[arg-type]
    if offload is not None and target != "cuda":
        raise InputError(f"offload={offload!r} moves weights between CPU and GPU and needs device 'cuda', not {target!r}")
    quantization = quantization_config(quantize, family, target, torch_dtype)

    key = (source.format, source.location, source.config, str(torch_dtype), target, offload, quantize)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None:
            base = _load_base(source, info, class_name, torch_dtype, target, offload, quantization)
            entry = _CacheEntry({class_name: base})
            _remember(key, entry)
        _cache.move_to_end(key)
        pipe = entry.pipelines.get(class_name)
        if pipe is None:
            pipe = _derive(next(iter(entry.pipelines.values())), class_name)
            entry.pipelines[class_name] = pipe
        _apply_memory_options(pipe, entry, attention_slicing=attention_slicing, vae_tiling=vae_tiling)
    return pipe


def resolve_and_detect(
    name: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
) -> tuple[ModelSource, ModelInfo]:
    """`resolve_source` + `detect`, remembered until the model's path changes on disk.

    Every inference asks for its pipeline; re-reading and re-checking the configs each time costs
    about a millisecond, which is most of canvaslab's overhead on small models.
    """
    path = os.fspath(name)
    stamp = os.stat(path).st_mtime_ns if os.path.exists(path) else None
    key = (path, None if config is None else os.fspath(config), None if cache_dir is None else os.fspath(cache_dir),
           local_files_only, stamp, downloads_disabled(local_files_only))
    return _resolved(*key)


@functools.lru_cache(maxsize=32)
def _resolved(
    path: str, config: str | None, cache_dir: str | None, local_files_only: bool | None, stamp: int | None, offline: bool
) -> tuple[ModelSource, ModelInfo]:
    source = resolve_source(path, config=config, cache_dir=cache_dir, local_files_only=local_files_only)
    return source, detect(source)


def check_inputs(*, task: str, dtype: str, device: str, offload: str | None) -> None:
    for argument, value, allowed in (
        ("task", task, TASKS),
        ("dtype", dtype, DTYPES),
        ("device", device, DEVICES),
        ("offload", offload, OFFLOADS),
    ):
        if value not in allowed:
            raise InputError(f"{argument} {value!r} is not one of {', '.join(map(repr, allowed))}")


def resolve_device(device: Device) -> str:
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        device = "cuda" if cuda else "mps" if mps else "cpu"
    if (device == "cuda" and not cuda) or (device == "mps" and not mps):
        raise InputError(f"device {device!r} is not available to torch on this machine; use device 'cpu' or 'auto'")
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None and torch.cuda.device_count() > 1:
        # Under `accelerate launch` / torchrun each process of a batch job takes its own GPU.
        return f"cuda:{int(local_rank) % torch.cuda.device_count()}"
    return device


def resolve_dtype(dtype: DType, device: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    if dtype == "fp16" and device == "cpu":
        raise InputError("dtype 'fp16' is not supported on the CPU (about 7x slower than fp32 there); use 'fp32' or 'bf16'")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _remember(key: tuple, entry: _CacheEntry) -> None:
    _cache[key] = entry
    while len(_cache) > MAX_CACHED_MODELS:
        _cache.popitem(last=False)


QUANTIZE = {"bnb-4bit": ("bitsandbytes_4bit", "bitsandbytes"), "bnb-8bit": ("bitsandbytes_8bit", "bitsandbytes"),
            "torchao-int8": ("torchao", "torchao")}  # name -> (diffusers backend, package)


def quantization_config(name: str | None, family: type[Family], device: str, torch_dtype: Any) -> Any:
    """diffusers' quantisation config for the denoiser, or None; a one-line refusal where it cannot run."""
    if name is None:
        return None
    if name not in QUANTIZE:
        raise InputError(f"quantize {name!r} is not one of {', '.join(QUANTIZE)}")
    backend, package = QUANTIZE[name]
    if device != "cuda":
        raise InputError(
            f"quantize={name} runs on CUDA only ({package} kernels), not on {device!r}; on this machine use a "
            "GGUF-quantised transformer file instead (e.g. flux1-fill-dev-Q4_K_S.gguf with --opt base=FOLDER)"
        )
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise InputError(f"quantize={name} needs the {package} package: pip install {package}")
    from diffusers import PipelineQuantizationConfig

    kwargs: dict[str, Any] = ({"load_in_4bit": True, "bnb_4bit_compute_dtype": torch_dtype} if name == "bnb-4bit"
                              else {"load_in_8bit": True} if name == "bnb-8bit" else {"quant_type": "int8wo"})
    return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=[family.denoiser])


def _load_base(source: ModelSource, info: ModelInfo, class_name: str, torch_dtype: torch.dtype, device: str,
               offload: Offload | None, quantization: Any = None) -> DiffusionPipeline:
    """Load, fix the scheduler's prediction type, mind the VAE's precision, then place on the device."""
    import torch

    cls = pipeline_class(class_name)
    family = families.family(info.family)
    pipe = _load_weights(cls, source, info, torch_dtype, quantization)
    _check_no_missing_weights(pipe, source)
    _check_tokenizers(pipe, source)
    if issubclass(family, StableDiffusion):
        _match_prediction_type(pipe, info)
    if torch_dtype == torch.float16 and not family.pipeline_upcasts_vae:
        keep_vae_in_fp32(pipe.vae)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif device != "cpu":  # loading leaves everything on the CPU already
        pipe.to(device)
    return pipe


# Errors diffusers/transformers/safetensors raise for files that are missing, partial or mismatched.
def _load_errors() -> tuple[type[BaseException], ...]:
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    errors: list[type[BaseException]] = [OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:
        pass
    return tuple(errors)


def _load_weights(cls: type, source: ModelSource, info: ModelInfo, torch_dtype: torch.dtype,
                  quantization: Any = None) -> DiffusionPipeline:
    import torch

    kwargs: dict[str, Any] = dict(dtype=torch_dtype, cache_dir=source.cache_dir, local_files_only=source.local_files_only)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if "safety_checker" in _init_parameters(cls):
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        if source.format == "single_file":
            assert source.path is not None and source.config is not None
            return families.family(info.family).load_single_file(cls, source.path, source.config, info, kwargs)
        if source.format == "folder" and torch_dtype == torch.float16 and _has_fp16_variant(source.path):
            kwargs["variant"] = "fp16"  # half the bytes to read
        return families.family(info.family).load_folder(cls, str(source.path or source.hub_id), kwargs)
    except CanvaslabError:
        raise
    except _load_errors() as exc:
        raise ModelNotAvailableError(f"could not load model {source.name!r}: {one_line(exc)}") from exc


def _init_parameters(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _has_fp16_variant(folder: Path | None) -> bool:
    return folder is not None and any(next((folder / d).glob("*.fp16.safetensors"), None) for d in _DENOISERS)


def _check_no_missing_weights(pipe: DiffusionPipeline, source: ModelSource) -> None:
    """diffusers builds models on the meta device and fills them from the file; a mismatched file
    leaves some weights unfilled, which would only fail later, mid-inference."""
    import torch

    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and any(p.device.type == "meta" for p in module.parameters()):
            raise ModelNotAvailableError(
                f"model {source.name!r} does not match its config: the {name} weights are incomplete; "
                "pass config=<a diffusers folder of the same architecture>"
            )


def _check_tokenizers(pipe: DiffusionPipeline, source: ModelSource) -> None:
    """transformers 5 does not fail on a tokenizer whose vocabulary did not load: it returns one with
    2 tokens, which turns every prompt into padding."""
    for name in ("tokenizer", "tokenizer_2"):
        tokenizer = getattr(pipe, name, None)
        if tokenizer is not None and len(tokenizer) <= 2:
            raise ModelNotAvailableError(
                f"model {source.name!r} has an empty {name} (its vocabulary did not load); "
                "re-download the model or pass config=<a complete diffusers folder>"
            )


def _match_prediction_type(pipe: DiffusionPipeline, info: ModelInfo) -> None:
    current = pipe.scheduler.config.get("prediction_type", "epsilon")
    if current != info.prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=info.prediction_type)
        notice(f"scheduler set to {info.prediction_type} prediction to match the checkpoint (config said {current})")


def keep_vae_in_fp32(vae: torch.nn.Module) -> None:
    """Run an fp16 pipeline's VAE in fp32 when its config asks for it (`force_upcast`).

    SD 1.x/2.x pipelines, unlike SDXL ones, never upcast the VAE themselves, and some VAEs overflow in
    fp16 (NaN -> black images; A1111's `--no-half-vae`). The VAE is kept in fp32 and hooks cast at its
    boundaries: images and latents in, encoder moments back to the pipeline's dtype.
    """
    import torch

    if not vae.config.get("force_upcast", True) or vae.dtype != torch.float16:
        return
    vae.to(torch.float32)

    def inputs_to_fp32(module, args):
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def output_to_fp16(module, args, output):
        return output.to(torch.float16)

    # encode = encoder -> quant_conv, decode = post_quant_conv -> decoder (the convs are optional)
    encoder_end = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else vae.encoder
    decoder_start = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else vae.decoder
    vae.encoder.register_forward_pre_hook(inputs_to_fp32)
    encoder_end.register_forward_hook(output_to_fp16)
    decoder_start.register_forward_pre_hook(inputs_to_fp32)


def _derive(base: DiffusionPipeline, class_name: str) -> DiffusionPipeline:
    """Another pipeline class over the same loaded modules (no reload, no extra memory)."""
    return pipeline_class(class_name).from_pipe(base)


def _apply_memory_options(pipe: DiffusionPipeline, entry: _CacheEntry, *, attention_slicing: bool,
                          vae_tiling: bool) -> None:
    # Toggle only on change: switching attention processors on every call costs time. The modules
    # are shared by every pipeline of the entry, so one toggle serves them all.
    if attention_slicing != entry.attention_slicing:
        if attention_slicing:
            pipe.enable_attention_slicing()
        else:
            pipe.disable_attention_slicing()
        entry.attention_slicing = attention_slicing
    if vae_tiling != entry.vae_tiling:
        if vae_tiling:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        entry.vae_tiling = vae_tiling


__all__ = [
    "ALIASES",
    "CheckpointHeader",
    "ModelAlias",
    "ModelInfo",
    "ModelSource",
    "cached_snapshot",
    "check_folder",
    "clear_pipeline_cache",
    "detect",
    "downloads_disabled",
    "folder_problem",
    "keep_vae_in_fp32",
    "kind_of_channels",
    "load_pipeline",
    "pipeline_class",
    "pipeline_class_name",
    "read_checkpoint_header",
    "resolve_device",
    "resolve_dtype",
    "resolve_source",
]
