"""LoRAs for the diffusion engine: `--lora PATH[:WEIGHT]`, repeatable, diffusers/peft and kohya formats.

`apply_loras(pipe, loras)` runs once per inference on the cached pipeline. Because the pipeline (and
its modules) outlive a request, LoRA state is bookkept on the UNet module itself, which every
pipeline derived with `from_pipe` shares:

- each file is loaded once, as a peft adapter whose name comes from the file's path, mtime and size
  (an edited file gets a new name and reloads; the stale adapter is deleted);
- each call activates exactly the requested adapters with their weights; the rest stay loaded but
  inactive, up to `MAX_LOADED_LORAS`, after which the least recently used are deleted;
- a call with no LoRAs (or only weight-0 ones) disables LoRA layers altogether, which gives the base
  model's output bit for bit (peft then calls the wrapped layer alone).

diffusers/peft behaviour this relies on (measured with diffusers 0.42, peft 0.21):
- `set_adapters` does not undo `disable_lora`: adapters stay off until `enable_lora`.
- `set_adapters([])` raises (KeyError), so "no LoRA" must be `disable_lora`.
- a weight-0 adapter happens to be exact too (`x + 0 * lora`), but it is left out anyway: it costs
  compute, and NaN/inf in a LoRA would leak through the multiplication.
- a LoRA for another architecture fails inside `load_lora_weights` with a size-mismatch RuntimeError
  after peft has already injected layers into some modules; `_load` deletes the half-loaded adapter.
- keys outside the `unet.`/`text_encoder*.` prefixes that contain "lora" are ignored by
  `load_lora_weights`, silently: a LoRA file can carry other tensors for canvaslab without bothering
  plain diffusers.

Widened LoRAs: a LoRA trained on a base whose UNet input was widened (4 -> 9 channels for inpainting,
4 -> 4+4N for editing; `canvaslab train`) carries the whole trained conv_in under `WIDENED_PREFIX`.
While such a LoRA is active, the UNet's conv_in is swapped for the carried one (and the config's
`in_channels` follows); when it is not, the original conv_in is back. `prepared_pipeline` reads the
channel count from the file header first, so a plain 4-channel base can run an edit with an
editing LoRA (`widened_channels`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canvaslab.core.compat import check_compatible
from canvaslab.errors import EngineError, InputError, ModelNotAvailableError

# A LoRA file is small (MBs to a few hundred MB), but several of them in a long-lived process add up.
MAX_LOADED_LORAS = 4
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' savers and trainers use
_ADAPTERS_ATTRIBUTE = "_canvaslab_loras"  # on the UNet: adapter name -> resolved file, oldest use first
_CONV_IN_ATTRIBUTE = "_canvaslab_conv_in"  # on the UNet: (original conv_in, its in_channels, active carrier file)
WIDENED_PREFIX = "canvaslab_lora_widened."  # + "conv_in.weight" / "conv_in.bias"
_lock = threading.Lock()
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class LoraFile:
    """One LoRA weights file on disk, as the user named it."""

    spec: str  # as the user gave it, for messages
    path: Path  # resolved .safetensors file

    @property
    def adapter_name(self) -> str:
        """Stable per file version: path, mtime and size (so an edited file is a new adapter)."""
        stat = self.path.stat()
        digest = hashlib.sha1(f"{self.path}|{stat.st_mtime_ns}|{stat.st_size}".encode()).hexdigest()[:12]
        # peft keeps adapters in ModuleDicts: names must not contain dots.
        stem = re.sub(r"[^0-9A-Za-z_]", "_", self.path.stem)[:40]
        return f"{stem}_{digest}"


# -- finding files -------------------------------------------------------------------------------


def resolve_lora(spec: str, *, cache_dir: str | os.PathLike[str] | None = None) -> LoraFile:
    """A local `.safetensors` file, a folder holding `pytorch_lora_weights.safetensors`, or a hub id
    (`owner/name`, or `owner/name/file.safetensors`) already in the Hugging Face cache."""
    path = Path(spec).expanduser()
    if path.is_file():
        return LoraFile(spec, _check_file(path.resolve(), spec))
    if path.is_dir():
        return LoraFile(spec, _check_file(_weights_in_folder(path.resolve(), spec), spec))
    hub_like = bool(_HUB_ID.match(spec)) and not spec.startswith((".", "/", "~", "\\"))
    found = _from_hub_cache(spec, cache_dir) if hub_like else None
    if found is not None:
        return LoraFile(spec, _check_file(found, spec))
    from canvaslab.engines.diffusion.models import _hub_cache, _looks_like_path

    if hub_like and not _looks_like_path(spec):
        raise ModelNotAvailableError(
            f"LoRA {spec!r} is neither a local path nor in the Hugging Face cache at {_hub_cache(_str(cache_dir))}; "
            "pass a local .safetensors file or folder, or download it on a connected machine and copy its HF_HOME cache here"
        )
    raise ModelNotAvailableError(
        f"LoRA file {spec} does not exist; pass an existing .safetensors file, a folder with {LORA_FILE}, "
        "or a hub id (owner/name[/file.safetensors]) in the Hugging Face cache"
    )


def _str(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else str(value)


def _weights_in_folder(folder: Path, spec: str) -> Path:
    if (folder / LORA_FILE).is_file():
        return folder / LORA_FILE
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1:  # many hub LoRAs ship one file under their own name
        return candidates[0]
    found = f"{len(candidates)} .safetensors files" if candidates else "no .safetensors file"
    raise InputError(f"LoRA folder {spec} has no {LORA_FILE} and {found}; pass the weights file itself")


def _from_hub_cache(spec: str, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """The cached file for a hub id, or None; reads the cache folder only, never the network.

    `try_to_load_from_cache` answers for one known file name; for a repo whose single weights file
    has another name, the `main` snapshot folder is searched like a local folder.
    """
    from huggingface_hub import try_to_load_from_cache

    from canvaslab.engines.diffusion.models import _hub_cache

    parts = spec.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or LORA_FILE
    try:
        found = try_to_load_from_cache(repo, filename, cache_dir=_str(cache_dir))
    except (ValueError, OSError):  # an id the hub would reject is simply not cached
        return None
    if isinstance(found, str):
        return Path(found)
    if len(parts) > 2:
        return None
    repo_folder = Path(_hub_cache(_str(cache_dir))) / ("models--" + repo.replace("/", "--"))
    try:
        commit = (repo_folder / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo_folder / "snapshots" / commit
    candidates = sorted(snapshot.glob("*.safetensors"))
    return candidates[0] if len(candidates) == 1 else None


def _check_file(path: Path, spec: str) -> Path:
    """Refuse what is not a LoRA before any module is touched: pickles, full checkpoints, other tensors."""
    if path.suffix != ".safetensors":
        raise InputError(
            f"LoRA {spec} is not a .safetensors file; only safetensors LoRAs are loaded (pickled .ckpt/.pt/.bin files can run code)"
        )
    keys = _safetensors_keys(path, spec)
    if not any("lora" in key.lower() for key in keys):
        what = "a full model checkpoint" if any(k.startswith(("model.diffusion_model.", "unet.", "conv_in.")) for k in keys) else "other tensors"
        raise InputError(f"LoRA {spec} is not a LoRA: it holds no lora_* tensors (it looks like {what})")
    return path


def _safetensors_keys(path: Path, spec: str) -> list[str]:
    return list(_safetensors_shapes(path, spec))


def _safetensors_shapes(path: Path, spec: str) -> dict[str, list[int]]:
    # The header alone (8-byte length + JSON) tells the tensor names and shapes; the weights stay unread.
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error):
        raise InputError(f"LoRA {spec} is not a readable .safetensors file; is it complete?") from None
    return {key: value.get("shape", []) for key, value in header.items() if key != "__metadata__"}


# -- applying ------------------------------------------------------------------------------------


def apply_loras(pipe: Any, loras: Sequence[tuple[str, float]], *, cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Make `pipe` run with exactly `loras` ((path or hub id, weight) pairs) active, and nothing else.

    Loads files not loaded yet, keeps loaded ones, disables LoRAs entirely when none (or only weight-0
    ones) are asked for. All files are resolved and checked before the pipeline is touched.
    """
    files = [(resolve_lora(spec, cache_dir=cache_dir), float(weight)) for spec, weight in loras]
    if any(weight != 0.0 for _, weight in files):
        check_compatible("peft")  # a known-broken transformers/peft pair fails here in one line, not mid-load
    with _lock:
        loaded: dict[str, str] = _loaded(pipe)
        weights: dict[str, float] = {}
        for lora, weight in files:
            name = lora.adapter_name
            if weight == 0.0:
                continue  # leaving the adapter out is exactly the base model
            if name not in loaded:
                _load(pipe, lora, name, loaded)
            weights[name] = weights.get(name, 0.0) + weight  # the same file twice adds up, as in A1111
            loaded[name] = loaded.pop(name)  # most recently used last
        active = {name: weight for name, weight in weights.items() if weight != 0.0}
        _evict(pipe, loaded, keep=set(active))
        _set_conv_in(pipe, [lora for lora, weight in files if weight != 0.0 and widened_channels(lora)])
        if not _has_peft_layers(pipe):
            return
        if not active:
            pipe.disable_lora()
            return
        pipe.enable_lora()  # set_adapters alone does not undo an earlier disable_lora
        pipe.set_adapters(list(active), adapter_weights=list(active.values()))


def widened_channels(lora: LoraFile) -> int | None:
    """The UNet input channels a widened LoRA was trained with (from the header), or None."""
    shape = _safetensors_shapes(lora.path, lora.spec).get(WIDENED_PREFIX + "conv_in.weight")
    return int(shape[1]) if shape else None


def _set_conv_in(pipe: Any, carriers: list[LoraFile]) -> None:
    """Swap in the conv_in of the active widened LoRA, or put the model's own back."""
    import torch

    unet = getattr(pipe, "unet", None)
    if unet is None:  # transformer families: widened LoRAs are a UNet (SD) feature
        if carriers:
            raise InputError(f"LoRA {carriers[0].spec} widens a UNet's input; this model has none (it is a transformer)")
        return
    saved = getattr(unet, _CONV_IN_ATTRIBUTE, None)
    if len({c.path for c in carriers}) > 1:
        raise InputError(f"LoRAs {', '.join(c.spec for c in carriers)} each widen the UNet's input; use one at a time")
    if not carriers:
        if saved is not None:
            unet.conv_in = saved[0]
            unet.register_to_config(in_channels=saved[1])
            delattr(unet, _CONV_IN_ATTRIBUTE)
        return
    lora = carriers[0]
    source = f"{lora.path}|{lora.adapter_name}"
    if saved is not None and saved[2] == source:
        return
    original = saved[0] if saved is not None else unet.conv_in
    from safetensors import safe_open

    with safe_open(str(lora.path), framework="pt") as handle:
        weight = handle.get_tensor(WIDENED_PREFIX + "conv_in.weight")
        names = set(handle.keys())
        bias = handle.get_tensor(WIDENED_PREFIX + "conv_in.bias") if WIDENED_PREFIX + "conv_in.bias" in names else None
    if weight.shape[0] != original.out_channels or weight.shape[2:] != original.weight.shape[2:] or weight.shape[1] < original.in_channels:
        raise InputError(
            f"LoRA {lora.spec} was trained for a UNet input of {tuple(weight.shape)}, which does not extend this "
            f"model's {tuple(original.weight.shape)}; is it for another model?"
        )
    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=original.kernel_size, stride=original.stride,
                           padding=original.padding, bias=bias is not None, device=original.weight.device,
                           dtype=original.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    conv.requires_grad_(False)
    unet.conv_in = conv
    unet.register_to_config(in_channels=weight.shape[1])
    setattr(unet, _CONV_IN_ATTRIBUTE, (original, original.in_channels, source))


def loaded_loras(pipe: Any) -> dict[str, str]:
    """Adapter name -> file of every LoRA currently loaded in `pipe` by canvaslab (oldest use first)."""
    return dict(_loaded(pipe))


def _loaded(pipe: Any) -> dict[str, str]:
    denoiser = getattr(pipe, "unet", None) or pipe.transformer  # shared by every pipeline over the same modules
    loaded = getattr(denoiser, _ADAPTERS_ATTRIBUTE, None)
    if loaded is None:
        loaded = {}
        setattr(denoiser, _ADAPTERS_ATTRIBUTE, loaded)
    return loaded


def _has_peft_layers(pipe: Any) -> bool:
    return any(getattr(pipe, name, None) is not None and hasattr(getattr(pipe, name), "peft_config")
               for name in getattr(pipe, "_lora_loadable_modules", ()))


def _load(pipe: Any, lora: LoraFile, name: str, loaded: dict[str, str]) -> None:
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise EngineError("LoRAs need the peft package; install it (pip install peft) and retry")
    # An edited file has a new adapter name; its old version would otherwise linger until evicted.
    for stale in [other for other, path in loaded.items() if path == str(lora.path)]:
        _delete(pipe, stale)
        del loaded[stale]
    try:
        with warnings.catch_warnings():
            # peft warns on every second adapter of a model; several adapters are what we want.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            pipe.load_lora_weights(str(lora.path.parent), weight_name=lora.path.name, adapter_name=name,
                                   local_files_only=True)
    except Exception as exc:  # diffusers/peft raise ValueError, RuntimeError, KeyError, ... for a bad file
        _delete(pipe, name)  # peft may have injected layers into some modules before failing
        raise InputError(
            f"LoRA {lora.spec} does not fit this model ({_one_line(exc)}); is it for another model family (SD 1.x/2.x, SDXL, FLUX, ...)?"
        ) from exc
    if not any(name in names for names in pipe.get_list_adapters().values()):
        raise InputError(f"LoRA {lora.spec} matched no layer of this model; is it for another model family (SD 1.x/2.x vs SDXL)?")
    loaded[name] = str(lora.path)


def _evict(pipe: Any, loaded: dict[str, str], *, keep: set[str]) -> None:
    for name in [n for n in loaded if n not in keep][: max(0, len(loaded) - MAX_LOADED_LORAS)]:
        _delete(pipe, name)
        del loaded[name]


def _delete(pipe: Any, name: str) -> None:
    present = {n for names in pipe.get_list_adapters().values() for n in names} if _has_peft_layers(pipe) else set()
    if name in present:
        pipe.delete_adapters([name])


def _one_line(exc: BaseException) -> str:
    """The first meaningful line of a library error (size-mismatch errors put the detail on line 2)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
    return text[:300]


__all__ = ["LORA_FILE", "MAX_LOADED_LORAS", "WIDENED_PREFIX", "LoraFile", "apply_loras", "loaded_loras", "resolve_lora",
           "widened_channels"]
