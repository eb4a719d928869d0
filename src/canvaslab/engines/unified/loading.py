"""Load and save unified models and MAGVIT tokenizers in the released folder layouts, offline.

A Show-o folder holds `config.json` (the released fields; see `config.UnifiedConfig`) and its weights:
`pytorch_model.bin`, `model.safetensors`, a sharded `*.index.json` with its shards, or a single
`*.safetensors`, with keys `showo.model.*`, `showo.lm_head.*` and, for the CLIP variant,
`mm_projector.*`. A MAGVIT-v2 folder is the same with `encoder.*`, `decoder.*`, `quantize.*`.

The backbone is built from the Show-o config alone (`config.resolve_llm`), never from the hub. A
name that is not a folder is looked up in the local Hugging Face cache only. Whatever is missing or
unreadable raises `ModelNotAvailableError` with one sentence saying what and how to provide it.

`save_unified_model` / `save_magvit` write our models back in the same layout (config.json with the
extra `llm_config` so that a reload needs nothing else), so trained checkpoints load through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from canvaslab.engines.unified.config import MagvitConfig, UnifiedConfig
from canvaslab.engines.unified.magvit import LookupFreeQuantizer, Magvit
from canvaslab.engines.unified.model import UnifiedModel
from canvaslab.errors import CanvaslabError, ModelNotAvailableError

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
INDEX_NAMES = tuple(f"{name}.index.json" for name in WEIGHT_NAMES)
StateDict = dict[str, torch.Tensor]


# -- public API ------------------------------------------------------------------------------------


def read_unified_config(source: str | Path) -> UnifiedConfig:
    """The `UnifiedConfig` of a Show-o folder (or cached hub id), without loading weights."""
    folder = resolve_folder(source, "unified model")
    return _parse_config(folder, "unified model", lambda data: UnifiedConfig.from_json_dict(data, folder=folder))


def load_unified_model(
    source: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", attn_implementation: str = "sdpa"
) -> UnifiedModel:
    """A released (or our saved) Show-o checkpoint as a `UnifiedModel` in eval mode."""
    folder = resolve_folder(source, "unified model")
    config = _parse_config(folder, "unified model", lambda data: UnifiedConfig.from_json_dict(data, folder=folder))
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = UnifiedModel(config, attn_implementation=attn_implementation)
    _load_weights(model, read_state_dict(folder, "unified model"), folder, "unified model")
    _rebuild_rotary(model)
    return model.to(device=device, dtype=dtype).eval()


def load_magvit(source: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Magvit:
    """A released (or our saved) MAGVIT-v2 tokenizer as a `Magvit` in eval mode."""
    folder = resolve_folder(source, "MAGVIT tokenizer")
    config = _parse_config(folder, "MAGVIT tokenizer", MagvitConfig.from_json_dict)
    with torch.device("meta"):
        model = Magvit(config)
    state = read_state_dict(folder, "MAGVIT tokenizer")
    if "quantize.embedding" not in state and "quantize.power_vals" not in state:
        # The quantizer's tables are fixed functions of the bit count: supply them if a checkpoint left them out.
        tables = LookupFreeQuantizer(config.codebook_bits)
        state = {**state, "quantize.embedding": tables.embedding, "quantize.power_vals": tables.power_vals}
    _load_weights(model, state, folder, "MAGVIT tokenizer")
    return model.to(device=device, dtype=dtype).eval()


def save_unified_model(model: UnifiedModel, folder: str | Path, *, safe_serialization: bool = False) -> Path:
    """Write `config.json` + `pytorch_model.bin` (or `model.safetensors`) in the released layout."""
    return _save(model, model.config.to_json_dict(), Path(folder), safe_serialization)


def save_magvit(model: Magvit, folder: str | Path, *, safe_serialization: bool = False) -> Path:
    """Write a MAGVIT-v2 folder in the released layout (config.json lists our architecture fields)."""
    return _save(model, model.config.to_json_dict(), Path(folder), safe_serialization)


def resolve_folder(source: str | Path, label: str) -> Path:
    """A local folder, or a hub id (`owner/name`) found in the local Hugging Face cache; never downloads."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotAvailableError(f"{label} {source} is a file; pass the folder that holds its {CONFIG_NAME} and weights")
    cached = _cached_hub_folder(str(source))
    if cached is not None:
        return cached
    raise ModelNotAvailableError(
        f"{label} {source!s} was not found: pass a local folder, or download it first "
        f"(e.g. `huggingface-cli download {source}` when it is a hub id)"
    )


def read_state_dict(folder: Path, label: str) -> StateDict:
    """All tensors of a folder's weight file(s), on CPU; a missing or unreadable file raises."""
    state: StateDict = {}
    for path in _weight_files(folder, label):
        state.update(_read_tensors(path, label))
    # Checkpoints of a DDP-wrapped model (e.g. accelerate's save_state) prefix every key with "module.".
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


# -- helpers ---------------------------------------------------------------------------------------


def _cached_hub_folder(name: str) -> Path | None:
    if name.count("/") != 1 or name.startswith((".", "/")):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, CONFIG_NAME)
    return Path(found).parent if isinstance(found, str) else None


def _parse_config(folder: Path, label: str, build: Callable[[dict[str, Any]], Any]) -> Any:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelNotAvailableError(f"{label} folder {folder} has no {CONFIG_NAME}: copy the complete model folder there")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelNotAvailableError(f"{path} could not be read ({error}): download the model again") from error
    try:
        return build(data)
    except ModelNotAvailableError:
        raise
    except (CanvaslabError, TypeError, ValueError) as error:
        raise ModelNotAvailableError(f"{path} does not describe a usable {label}: {error}") from error


def _weight_files(folder: Path, label: str) -> list[Path]:
    for index in INDEX_NAMES:
        if (folder / index).is_file():
            return _shards(folder / index, label)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    single = sorted(folder.glob("*.safetensors"))
    if len(single) == 1:
        return single
    found = "several *.safetensors files and no index" if single else "no weights"
    raise ModelNotAvailableError(
        f"{label} folder {folder} has {found}: it needs pytorch_model.bin, model.safetensors or a sharded *.index.json"
    )


def _shards(index: Path, label: str) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise ModelNotAvailableError(f"{label} weight index {index} could not be read ({error}): download the model again") from error
    shards = sorted({index.parent / name for name in weight_map.values()})
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise ModelNotAvailableError(
            f"{label} folder {index.parent} lacks {len(missing)} weight shard(s) listed in {index.name} "
            f"({missing[0]} ...): finish the download"
        )
    return shards


def _read_tensors(path: Path, label: str) -> StateDict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated downloads surface as many different library errors
        raise ModelNotAvailableError(
            f"{label} weights {path} could not be read ({type(error).__name__}): the file is damaged or incomplete, download it again"
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # training checkpoints often nest the weights
    if not isinstance(state, dict):
        raise ModelNotAvailableError(f"{label} weights {path} hold no state dict: it is not a {label} checkpoint")
    return state


def _load_weights(model: nn.Module, state: StateDict, folder: Path, label: str) -> None:
    """Strict load that explains a mismatch in one sentence instead of torch's key dump."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"lack {len(missing)} of the {len(expected)} tensors the config needs (first: {missing[0]})")
        if unexpected:
            parts.append(f"have {len(unexpected)} tensors it does not (first: {unexpected[0]})")
        raise ModelNotAvailableError(
            f"the {label} weights in {folder} {' and '.join(parts)}: the download is incomplete or config.json does not match the weights"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelNotAvailableError(
                f"the {label} weight {key} in {folder} has shape {tuple(state[key].shape)} but config.json implies "
                f"{tuple(tensor.shape)}: the config does not match the weights"
            )
    model.load_state_dict(state, strict=True, assign=True)


def _rebuild_rotary(model: UnifiedModel) -> None:
    """Rotary frequencies are not in checkpoints (non-persistent): compute them for real, off the meta device."""
    backbone = model.showo.model
    backbone.rotary_emb = type(backbone.rotary_emb)(config=model.showo.config)


def _save(model: nn.Module, config: dict[str, Any], folder: Path, safe_serialization: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.detach().contiguous().cpu() for key, tensor in model.state_dict().items()}
    weights = folder / ("model.safetensors" if safe_serialization else "pytorch_model.bin")
    if safe_serialization:
        from safetensors.torch import save_file

        _atomic_write(weights, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    else:
        _atomic_write(weights, lambda path: torch.save(state, path))
    _atomic_write(folder / CONFIG_NAME, lambda path: path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    return folder


def _atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    """Write next to `target` and rename, so a crash never leaves a half-written checkpoint behind."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        write(Path(name))
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
