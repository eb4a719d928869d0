"""ControlNet for the diffusion engine: load ControlNets offline-first, pick the family's control pipeline,
and turn a request's control units into that pipeline's arguments.

A unit is a ControlNet, a control image (or the engine's own input image), a preprocessor, a weight,
where in the denoising it acts (start..end) and a control mode. The family says which diffusers
pipeline runs a task with ControlNets (`Family.control_pipelines`; ControlNet Union models have their
own); that pipeline is derived from the cached one with `from_pipe`, so the model is loaded once and the
ControlNets join it. Several units run together (diffusers' Multi-ControlNet): each with its own image,
weight and steps.

Control modes (A1111's names): `balanced`; `control` ("ControlNet is more important": diffusers'
guess mode, the ControlNet only on the conditional pass, its residuals ramped from 0.1 to 1 over the
layers); `prompt` ("My prompt is more important": each residual scaled by 0.825^k, k counting layers
down from the middle block, so deep, coarse layers keep the ControlNet and fine ones follow the prompt).
Families whose pipelines have no guess mode (the transformer families) take `balanced` only.

The control image reaches the engine at the size it works at (tasks carry it through crops, scaling and
alignment with the input image); the preprocessor runs here, on that image, so maps are made at the
working resolution (A1111's "pixel perfect").
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from canvaslab.engines.base import ControlUnit, Generation
from canvaslab.engines.diffusion import preprocessors
from canvaslab.engines.diffusion.families.base import one_line
from canvaslab.errors import EngineError, InputError, ModelNotAvailableError

MODES = ("balanced", "prompt", "control")
PROMPT_MODE_DECAY = 0.825  # per layer from the middle block outwards, as sd-webui-controlnet's soft injection
# ControlNet Union (xinsir): the control type index of each kind of map
UNION_TYPES = {"openpose": 0, "depth": 1, "scribble": 2, "hed": 2, "softedge": 2, "canny": 3, "lineart": 3, "mlsd": 3,
               "normal": 4, "segment": 5, "tile": 6, "inpaint": 7}
# FLUX.1 ControlNet Union (InstantX, Shakker-Labs Pro): the control mode of each of our preprocessors' maps
FLUX_UNION_MODES = {"canny": 0, "tile": 1, "depth": 2, "blur": 3}
MAX_CACHED_CONTROLNETS = 4
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.fp16.safetensors")
_cache: OrderedDict[tuple, Any] = OrderedDict()
_lock = threading.Lock()


# -- finding and loading ControlNets --------------------------------------------------------------


def controlnet_source(spec: str, *, cache_dir: str | None = None, local_files_only: bool | None = None) -> Path:
    """The folder (diffusers layout) or single file of ControlNet `spec`: a path, or a hub id from the local
    cache; what is not on this machine fails in one sentence (downloads only when they are allowed)."""
    from canvaslab.engines.diffusion.models import _HUB_ID, _hub_cache, downloads_disabled

    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"ControlNet folder {path} has no config.json; pass a diffusers ControlNet "
                                         "folder (config.json + diffusion_pytorch_model.safetensors) or a single file")
        if not any((path / name).is_file() for name in _WEIGHTS):
            raise ModelNotAvailableError(f"ControlNet folder {path} has no weights (diffusion_pytorch_model.safetensors)")
        return path.resolve()
    if path.is_file():
        if path.suffix not in (".safetensors", ".pth", ".ckpt", ".bin"):
            raise InputError(f"ControlNet {path} is neither a diffusers folder nor a .safetensors/.pth/.ckpt file")
        return path.resolve()
    if not _HUB_ID.fullmatch(spec) or spec.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"ControlNet {spec} does not exist; give a diffusers ControlNet folder, a "
                                     ".safetensors/.pth file or a hub id (owner/name)")
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec, "config.json", cache_dir=cache_dir)
    if isinstance(found, str) and any((Path(found).parent / name).is_file() for name in _WEIGHTS):
        return Path(found).parent
    if downloads_disabled(local_files_only):
        raise ModelNotAvailableError(
            f"ControlNet {spec} is not in the Hugging Face cache at {_hub_cache(cache_dir)} and downloads are off; "
            "download it on a connected machine (huggingface-cli download) and copy its HF_HOME cache here, or pass "
            "a local ControlNet folder or file"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, cache_dir=cache_dir, allow_patterns=["config.json", "*.safetensors"]))
    except Exception as exc:  # hub/network failures of every kind: one line naming the ControlNet
        raise ModelNotAvailableError(f"ControlNet {spec} could not be downloaded ({one_line(exc)})") from exc


def controlnet_class_name(source: Path) -> str:
    """The diffusers class a ControlNet folder's config names (ControlNetModel, ControlNetUnionModel, ...)."""
    if source.is_file():
        return "ControlNetModel"  # original-layout single files are SD/SDXL ControlNets
    try:
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"ControlNet config {source / 'config.json'} could not be read: {one_line(exc)}") from None
    return str(config.get("_class_name") or "ControlNetModel")


def load_controlnet(spec: str, *, allowed: Sequence[str], dtype: Any, device: Any, cache_dir: str | None = None,
                    local_files_only: bool | None = None) -> Any:
    """ControlNet `spec` as a module in `dtype` on `device` (cached by file, dtype and device).

    `allowed`: the ControlNet classes the model's family takes; another one is refused in one line.
    """
    import diffusers

    source = controlnet_source(spec, cache_dir=cache_dir, local_files_only=local_files_only)
    if source.is_file() and "ControlNetModel" not in allowed:  # diffusers reads single files of SD/SDXL ones only
        raise ModelNotAvailableError(f"ControlNet {spec} is a single file, which loads for Stable Diffusion and SDXL "
                                     "ControlNets only; give this model's ControlNet as a diffusers folder "
                                     "(config.json + diffusion_pytorch_model.safetensors)")
    class_name = controlnet_class_name(source)
    if class_name not in allowed:
        raise InputError(f"ControlNet {spec} is a {class_name}, which does not fit this model (it takes "
                         f"{', '.join(allowed) or 'no ControlNet'})")
    key = (str(source), os.stat(source).st_mtime_ns, str(dtype), str(device))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    cls = getattr(diffusers, class_name)
    try:
        if source.is_file():
            net = cls.from_single_file(str(source), torch_dtype=dtype, local_files_only=True)
        else:
            net = cls.from_pretrained(str(source), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if source.is_file():
            raise ModelNotAvailableError(
                f"ControlNet file {source} could not be loaded offline ({one_line(exc)}); pass its diffusers folder "
                "(config.json + diffusion_pytorch_model.safetensors) instead"
            ) from exc
        raise ModelNotAvailableError(f"could not load ControlNet {spec}: {one_line(exc)}") from exc
    net = net.to(device).eval()
    with _lock:
        _cache[key] = net
        while len(_cache) > MAX_CACHED_CONTROLNETS:
            _cache.popitem(last=False)
    return net


def clear_controlnet_cache() -> None:
    with _lock:
        _cache.clear()


# -- the pipeline ------------------------------------------------------------------------------


def without_silent_units(generation: Generation) -> Generation:
    """`generation` without its units of weight 0. Such a unit adds nothing; leaving it out (its ControlNet
    not even loaded) makes weight 0 the run without it bit for bit, also where the control pipeline differs
    from the plain one (SD3's inpainting ControlNet pipeline starts from noise, FLUX.1's encodes differently)."""
    import dataclasses

    units = tuple(unit for unit in generation.control if unit.weight != 0)
    return generation if len(units) == len(generation.control) else dataclasses.replace(generation, control=units)


def check_units(units: Sequence[ControlUnit], family: Any, task: str, label: str) -> None:
    """What a request's units ask, checked before anything loads: the family runs ControlNets for the task,
    modes it has, preprocessors and their settings."""
    if not family.control_pipelines:
        raise InputError(f"{label} is a {family.label} model, for which canvaslab has no ControlNet pipeline; "
                         "leave out --control, or use a Stable Diffusion, SDXL, SD3 or FLUX.1 model")
    for unit in units:
        if unit.mode not in MODES:
            raise InputError(f"control mode {unit.mode!r} is not one of {', '.join(MODES)}")
        if unit.mode != "balanced" and not family.control_modes:
            raise InputError(f"control mode {unit.mode!r} is for Stable Diffusion ControlNets; {family.label} "
                             "ControlNets take balanced only")
        if unit.start >= unit.end:
            raise InputError(f"control start {unit.start:g} must be below end {unit.end:g}")
        preprocessors.check_settings(unit.preprocessor, unit.threshold_a, unit.threshold_b)
    modes = {unit.mode == "control" for unit in units}
    if len(modes) > 1:
        raise InputError("control mode 'control' (guess mode) applies to every ControlNet of a run at once: give all "
                         "units mode control, or none")


def control_pipeline(pipe: Any, info: Any, task: str, generation: Generation, *, label: str) -> Any:
    """The family's ControlNet pipeline for `task`, over the modules of the cached `pipe`, with the
    request's ControlNets (one, several, or one Union model for several units)."""
    from canvaslab.engines.diffusion.families import family as family_of
    from canvaslab.engines.diffusion.models import pipeline_class

    family = family_of(info.family)
    units = generation.control
    check_units(units, family, task, label)
    denoiser = getattr(pipe, family.denoiser)
    nets, _ = _distinct_nets(units, family, generation, denoiser)
    union = [is_union(net) for net in nets]
    if any(union) and not all(union):
        raise InputError("ControlNet Union models and plain ControlNets cannot run together; use one kind per run")
    if all(union) and len(nets) > 1:
        raise InputError("one ControlNet Union model runs several control types at once; give every unit the same "
                         "Union model")
    _check_kinds(nets, units, family, task)
    class_name = family.control_pipeline_class_name(info, task, union=all(union), label=label)
    # a FLUX.1 Union model runs several units as diffusers' Multi-ControlNet of that one model
    several = len(nets) > 1 or (len(units) > 1 and _flux_union(nets[0]))
    key = (class_name, tuple(id(net) for net in nets), several)
    derived: OrderedDict = pipe.__dict__.setdefault("_canvaslab_control", OrderedDict())
    if key not in derived:
        own = getattr(pipe, "_canvaslab_own_scheduler", pipe.scheduler)
        control = pipeline_class(class_name).from_pipe(pipe, controlnet=list(nets) if several else nets[0])
        control._canvaslab_own_scheduler = own  # the model's scheduler, whatever `pipe` was switched to
        control.set_progress_bar_config(disable=True)
        derived[key] = control
        while len(derived) > MAX_CACHED_CONTROLNETS:
            derived.popitem(last=False)
    derived.move_to_end(key)
    return derived[key]


def _distinct_nets(units: Sequence[ControlUnit], family: Any, generation: Generation,
                   denoiser: Any) -> tuple[list[Any], list[int]]:
    """The ControlNet modules of `units` (a model named twice is one module when it is a Union model),
    and for each unit the index of its module."""
    nets: list[Any] = []
    index: list[int] = []
    for unit in units:
        net = load_controlnet(unit.model, allowed=family.controlnet_classes, dtype=denoiser.dtype,
                              device=denoiser.device, cache_dir=generation.cache_dir,
                              local_files_only=generation.local_files_only)
        _check_fits(net, denoiser, unit.model, family)
        if is_union(net) and any(n is net for n in nets):
            index.append(next(i for i, n in enumerate(nets) if n is net))
            continue
        nets.append(net)
        index.append(len(nets) - 1)
    return nets, index


def _check_kinds(nets: Sequence[Any], units: Sequence[ControlUnit], family: Any, task: str) -> None:
    """ControlNets the family's pipeline for `task` cannot feed, refused before anything runs."""
    if family.control_inpaint != "mask":
        return
    # SD3: an inpainting ControlNet reads the masked image's latents plus the mask (one extra channel)
    inpainting = [bool(getattr(net.config, "extra_conditioning_channels", 0)) for net in nets]
    if task == "inpaint" and not all(inpainting):
        raise InputError(f"{family.label} inpaints with inpainting ControlNets only (e.g. alimama-creative/"
                         f"SD3-Controlnet-Inpainting, preprocessor inpaint), and {units[inpainting.index(False)].model} "
                         "is not one: use it with generate")
    if task != "inpaint" and any(inpainting):
        raise InputError(f"{units[inpainting.index(True)].model} is an inpainting ControlNet: it runs with inpaint and "
                         "outpaint, not generate")


def _check_fits(net: Any, denoiser: Any, spec: str, family: Any) -> None:
    """A ControlNet made for another model (SD 1.5's on SDXL) only fails deep inside with a shape error."""
    mine = getattr(denoiser.config, "cross_attention_dim", None) or getattr(denoiser.config, "joint_attention_dim", None)
    theirs = getattr(net.config, "cross_attention_dim", None) or getattr(net.config, "joint_attention_dim", None)
    if mine is not None and theirs is not None and mine != theirs:
        raise InputError(f"ControlNet {spec} was made for another model (text features {theirs} wide, this "
                         f"{family.label} model's are {mine}); use a ControlNet for {family.label}")


# -- the call ----------------------------------------------------------------------------------


def control_arguments(pipe: Any, info: Any, task: str, generation: Generation, image: np.ndarray,
                      mask: np.ndarray | None, call: set[str], seed: int) -> dict[str, Any]:
    """The control pipeline's arguments for the units of `generation`: images (made by each unit's
    preprocessor from its control image, or from `image`), weights, steps, mode."""
    from canvaslab.engines.diffusion.families import family as family_of

    family = family_of(info.family)
    units = generation.control
    union = is_union(_controlnet_of(pipe))
    if union and _flux_union(_controlnet_of(pipe)):
        return _flux_union_arguments(units, image, mask, family, seed, generation.cache_dir)
    maps = [control_map(unit, image, mask, family, union=union, seed=seed, cache_dir=generation.cache_dir)
            for unit in units]
    key = "control_image" if "control_image" in call else "image"
    one = len(units) == 1 and not union
    arguments: dict[str, Any] = {
        key: maps[0] if one else maps,
        "controlnet_conditioning_scale": units[0].weight if one else [unit.weight for unit in units],
        "control_guidance_start": units[0].start if one else [unit.start for unit in units],
        "control_guidance_end": units[0].end if one else [unit.end for unit in units],
    }
    if union:
        arguments["control_mode"] = [union_type(unit) for unit in units]
        known = _controlnet_of(pipe).config.num_control_type
        if max(arguments["control_mode"]) >= known:
            raise InputError(f"this ControlNet Union model knows {known} control types, and inpaint is the 8th (ProMax "
                             "models have it): use ControlNet Union ProMax for inpaint units")
        weights = {unit.weight for unit in units}
        if len(weights) > 1:
            raise InputError("the units of one ControlNet Union model share one weight (diffusers scales the model, "
                             "not each control type): give them the same weight")
        arguments["controlnet_conditioning_scale"] = units[0].weight
    if not union and not one and "control_mode" in call:
        arguments["control_mode"] = [-1] * len(units)  # FLUX.1 Multi-ControlNet zips the nets with a mode each
    if "guess_mode" in call and units[0].mode == "control":
        arguments["guess_mode"] = True
    if family.control_inpaint == "mask" and task == "inpaint":
        if mask is None or not any(unit.preprocessor == "inpaint" for unit in units):
            raise InputError(f"{family.label} ControlNets inpaint with an inpainting ControlNet only: give its unit "
                             "preprocessor inpaint")
        from PIL import Image

        arguments["control_mask"] = Image.fromarray(mask.astype(np.uint8) * 255)
    return arguments


def is_union(net: Any) -> bool:
    """A ControlNet Union model: one network for several kinds of map (SDXL's ControlNetUnionModel, or a FLUX.1
    ControlNet with control modes)."""
    return type(net).__name__ == "ControlNetUnionModel" or _flux_union(net)


def _flux_union(net: Any) -> bool:
    return bool(getattr(getattr(net, "config", None), "num_mode", None))  # a Multi-ControlNet wrapper has no config


def _flux_union_arguments(units: Sequence[ControlUnit], image: np.ndarray, mask: np.ndarray | None, family: Any,
                          seed: int, cache_dir: str | None) -> dict[str, Any]:
    """A FLUX.1 Union model's arguments: each unit's map with its control mode, weight and steps (one unit: the
    single-ControlNet form; several: the Multi-ControlNet form over the one model)."""
    modes = []
    for unit in units:
        if unit.preprocessor not in FLUX_UNION_MODES:
            raise InputError(f"a FLUX.1 ControlNet Union model needs to know what unit {unit.model}'s image is, and "
                             f"preprocessor {unit.preprocessor!r} does not say: use {', '.join(FLUX_UNION_MODES)}")
        modes.append(FLUX_UNION_MODES[unit.preprocessor])
    maps = [control_map(unit, image, mask, family, union=True, seed=seed, cache_dir=cache_dir) for unit in units]
    if len(units) == 1:
        unit = units[0]
        return {"control_image": maps[0], "control_mode": modes[0], "controlnet_conditioning_scale": unit.weight,
                "control_guidance_start": unit.start, "control_guidance_end": unit.end}
    return {"control_image": maps, "control_mode": modes, "controlnet_conditioning_scale": [u.weight for u in units],
            "control_guidance_start": [u.start for u in units], "control_guidance_end": [u.end for u in units]}


def _controlnet_of(pipe: Any) -> Any:
    net = pipe.controlnet
    return net.nets[0] if hasattr(net, "nets") and len(net.nets) == 1 else net


def union_type(unit: ControlUnit) -> int:
    """The Union control type of a unit: named by the preprocessor that made its map."""
    kind = preprocessors.preprocessor(unit.preprocessor).union_type
    if kind is None:
        raise InputError(f"ControlNet Union needs to know what unit {unit.model}'s image is, and preprocessor "
                         f"{unit.preprocessor!r} does not say: use canny, scribble, lineart, tile, blur or inpaint")
    return UNION_TYPES[kind]


def control_map(unit: ControlUnit, image: np.ndarray, mask: np.ndarray | None, family: Any, *, union: bool,
                seed: int, cache_dir: str | None = None) -> Any:
    """What the ControlNet of `unit` gets: a PIL image, or for SD 1.x/2.x inpaint ControlNets a tensor in
    [0, 1] whose masked pixels are -1 (what they were trained on: 'no information here')."""
    from PIL import Image

    source = image if unit.image is None else unit.image
    if unit.source is not None and unit.image is None:
        raise EngineError(f"control image {unit.source} was not loaded before the engine ran")
    if source.shape[:2] != image.shape[:2]:
        raise EngineError(f"control image of {source.shape[1]}x{source.shape[0]} for an image of "
                          f"{image.shape[1]}x{image.shape[0]}")
    if unit.preprocessor == "inpaint" and mask is None:
        raise InputError("preprocessor inpaint marks the masked area for an inpaint ControlNet; it needs a task with "
                         "a mask (inpaint, outpaint)")
    if unit.preprocessor == "inpaint" and family.control_inpaint == "minus-one" and not union:
        import torch

        pixels = torch.from_numpy(source.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        hole = torch.from_numpy(np.ascontiguousarray(mask))[None, None].expand_as(pixels)
        return torch.where(hole, torch.tensor(-1.0), pixels)
    if unit.preprocessor == "inpaint" and family.control_inpaint == "mask":
        return Image.fromarray(source)  # the pipeline masks it itself, from control_mask
    made = preprocessors.run(unit.preprocessor, source, mask=mask, threshold_a=unit.threshold_a,
                             threshold_b=unit.threshold_b, seed=seed, cache_dir=cache_dir)
    return Image.fromarray(made)


@contextlib.contextmanager
def control_modes(pipe: Any, units: Sequence[ControlUnit], seed: int) -> Iterator[None]:
    """While running: units in mode `prompt` have their ControlNet's residuals scaled down from the middle
    block outwards (hooks on those ControlNets, removed afterwards); torch's global generator seeded from
    `seed` and restored after, since SD3's ControlNet pipelines encode the control image by sampling the
    VAE's latent distribution without the call's generator (the same seed would give another image)."""
    import torch

    nets = pipe.controlnet.nets if hasattr(pipe.controlnet, "nets") else [pipe.controlnet]
    hooks = []
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for net, unit in zip(nets, units):
                if unit.mode == "prompt":
                    hooks.append(net.register_forward_hook(_soft_injection))
            yield
    finally:
        for hook in hooks:
            hook.remove()


def _soft_injection(module: Any, args: Any, output: Any) -> Any:
    down, middle = (output.down_block_res_samples, output.mid_block_res_sample) if hasattr(output, "mid_block_res_sample") \
        else output
    count = len(down)
    scaled = tuple(sample * PROMPT_MODE_DECAY ** (count - i) for i, sample in enumerate(down))
    if hasattr(output, "mid_block_res_sample"):
        return type(output)(down_block_res_samples=scaled, mid_block_res_sample=middle)
    return scaled, middle
