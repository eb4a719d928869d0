"""IP-Adapter image prompts for the diffusion engine: reference images steer the result through an image
encoder and extra cross-attention, beside the text prompt.

An adapter is a weights file in the diffusers/original layout (`image_proj.*` + `ip_adapter.*` keys:
ip-adapter_sd15, ip-adapter-plus_sd15, ip-adapter-plus-face_sd15, ip-adapter_sdxl, ...) plus the CLIP
vision encoder it was trained with, read from a local folder: `encoder=FOLDER`, or `image_encoder/`
beside the weights file (how h94/IP-Adapter lays them out). Nothing is fetched for them: a missing
encoder is one sentence naming the folder to fill.

Like LoRAs (lora.py), adapters live in the UNet every pipeline of the cached model shares, so
`apply_ip_adapters` runs on every call: it loads what is asked, unloads what is not (the UNet's own
attention comes back, so a run without adapters, or with weight 0, is the model alone bit for bit), and
gives the calling pipeline the encoder. Stable Diffusion 1.x/2.x/XL, and FLUX.1 dev/schnell with XLabs'
layout (`ip_adapter_proj_model.*` + `double_blocks.<k>.processor.ip_adapter_double_stream_{k,v}_proj.*`, a
CLIP ViT-L encoder) on the pipelines that take reference images (not Fill, not the ControlNet inpaint
pipeline). SD3 / SD3.5 take InstantX's layout (SD3.5-Large-IP-Adapter: `image_proj.*`, a resampler with a
timestep embedding, + `ip_adapter.<i>.*`, one processor per attention) with a SigLIP vision encoder; diffusers
runs one such adapter with one reference image per call, so more is a one-line refusal there; its ControlNet
pipelines take the adapter too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from canvaslab.engines.base import ImagePrompt
from canvaslab.engines.diffusion.families.base import one_line
from canvaslab.errors import InputError, ModelNotAvailableError

_LOADED = "_canvaslab_ip_adapters"  # on the UNet: the key of what is loaded
_lock = threading.Lock()
_encoders: dict[tuple, Any] = {}  # (folder, mtime, dtype, device) -> CLIP/SigLIP vision encoder (the last one only)
IP_FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")
FAMILY_WORDS = "Stable Diffusion 1.x/2.x/XL, SD3 / SD3.5 and FLUX.1 dev/schnell"


def adapter_file(spec: str, *, cache_dir: str | None = None) -> Path:
    """The weights file of IP-Adapter `spec`: a local file, or `owner/repo/path/in/repo.safetensors` from the
    local Hugging Face cache."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        raise InputError(f"IP-Adapter {spec} is a folder; give the adapter's weights file in it "
                         "(e.g. models/ip-adapter_sd15.safetensors)")
    parts = spec.split("/")
    if len(parts) >= 3 and not spec.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache("/".join(parts[:2]), "/".join(parts[2:]), cache_dir=cache_dir)
        if isinstance(found, str):
            return Path(found)
    raise ModelNotAvailableError(
        f"IP-Adapter {spec} is not on this machine: give the weights file (e.g. ip-adapter_sd15.safetensors), or "
        "owner/repo/path/file.safetensors of a hub repo in the local Hugging Face cache"
    )


def encoder_folder(adapter: Path, encoder: str | None, family: str = "") -> Path:
    """The image encoder's folder of an adapter: the one given, else `image_encoder/` beside the file."""
    folder = Path(encoder).expanduser() if encoder else adapter.parent / "image_encoder"
    if (folder / "config.json").is_file() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
        return folder.resolve()
    where = f"{folder}" if encoder else f"{folder} (beside the adapter), or give encoder=FOLDER"
    if family == "sd3":
        raise ModelNotAvailableError(
            f"IP-Adapter {adapter.name} needs its image encoder, a SigLIP vision folder (config.json + "
            f"model.safetensors), at {where}; InstantX/SD3.5-Large-IP-Adapter was trained with "
            "google/siglip-so400m-patch14-384: put that repo's files there"
        )
    raise ModelNotAvailableError(
        f"IP-Adapter {adapter.name} needs its image encoder, a CLIP vision folder (config.json + model.safetensors), "
        f"at {where}; h94/IP-Adapter ships it as models/image_encoder (SD 1.5 and the SDXL vit-h adapters) and "
        "sdxl_models/image_encoder"
    )


def _state_dict(path: Path) -> dict[str, dict[str, Any]]:
    """{"image_proj": ..., "ip_adapter": ...} from a .safetensors (flat, prefixed keys) or .bin file."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path))
            nested: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
            for key, tensor in flat.items():
                group, _, name = key.partition(".")
                if group in ("image_proj", "ip_adapter_proj_model"):  # the latter: XLabs' FLUX.1 layout
                    nested["image_proj"][name] = tensor
                elif group == "ip_adapter":
                    nested["ip_adapter"][name] = tensor
                elif group == "double_blocks":  # XLabs: double_blocks.<k>.processor.ip_adapter_double_stream_k_proj.*
                    name = name.replace("processor.", "").replace("ip_adapter_double_stream_k_proj", "to_k_ip")
                    nested["ip_adapter"][name.replace("ip_adapter_double_stream_v_proj", "to_v_ip")] = tensor
            return nested
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or truncated files of either format
        raise ModelNotAvailableError(f"IP-Adapter {path} could not be read ({one_line(exc)}); is it complete?") from None
    if not isinstance(data, dict) or "image_proj" not in data or "ip_adapter" not in data:
        raise InputError(f"{path} is not an IP-Adapter (no image_proj / ip_adapter weights)")
    return data


def _encoder(folder: Path, dtype: Any, device: Any, *, siglip: bool = False) -> Any:
    """The CLIP vision encoder with its projection (SD, FLUX.1 adapters), or a SigLIP vision model (SD3)."""
    from transformers import CLIPVisionModelWithProjection, SiglipVisionModel

    kind = SiglipVisionModel if siglip else CLIPVisionModelWithProjection
    key = (str(folder), os.stat(folder).st_mtime_ns, str(dtype), str(device), kind.__name__)
    if key not in _encoders:
        try:
            model = kind.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelNotAvailableError(f"image encoder {folder} could not be loaded: {one_line(exc)}") from None
        _encoders.clear()  # one encoder at a time: they are 0.6-2.5 GB
        _encoders[key] = model.to(device).eval()
    return _encoders[key]


def _encoder_kind(folder: Path) -> str:
    """The `model_type` of the encoder's config.json ("clip_vision_model", "siglip_vision_model", ...)."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"image encoder {folder} has no readable config.json ({one_line(exc)})") from None
    kind = config.get("model_type", "") if isinstance(config, dict) else ""
    if kind == "siglip" and isinstance(config.get("vision_config"), dict):  # a whole SigLIP model's folder
        kind = "siglip_vision_model"
    return str(kind)


def apply_ip_adapters(pipe: Any, info: Any, adapters: Sequence[ImagePrompt], *, cache_dir: str | None = None,
                      local_files_only: bool | None = None) -> None:
    """Make `pipe` run with exactly the `adapters` of non-zero weight (and their encoder), or with none."""
    active = [a for a in adapters if a.weight != 0]
    unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)  # the denoiser the adapter goes into
    if active and info.family not in IP_FAMILIES:
        raise InputError(f"IP-Adapters run with {FAMILY_WORDS} models here; this is a {info.family} model "
                         f"({type(pipe).__name__}): leave out --ip-adapter")
    if active and (unet is None or not hasattr(pipe, "load_ip_adapter")):
        raise InputError(f"{type(pipe).__name__} takes no IP-Adapter (FLUX.1 Fill and FLUX.1's ControlNet inpaint "
                         "pipeline have none): leave out --ip-adapter for this run")
    sd3 = info.family == "sd3"
    if sd3 and active and (len(active) > 1 or len(active[0].images) > 1):
        raise InputError("SD3 runs one IP-Adapter with one reference image (as diffusers' SD3 pipelines take it): "
                         "give a single --ip-adapter with a single image")
    if unet is None:
        return
    with _lock:
        if not active:
            if getattr(unet, _LOADED, None) is not None:
                _unload(pipe)
                setattr(unet, _LOADED, None)
            return
        files = [adapter_file(a.model, cache_dir=cache_dir) for a in active]
        for file in files:
            if "faceid" in file.name.lower():
                raise InputError(f"{file.name} is a FaceID IP-Adapter, which takes face embeddings from insightface "
                                 "that canvaslab does not compute; use a plus-face adapter (CLIP image encoder) instead")
        encoders = {encoder_folder(f, a.encoder, info.family) for f, a in zip(files, active)}
        if len(encoders) > 1:
            raise InputError(f"the IP-Adapters of one run share one image encoder, and these need {len(encoders)}: "
                             "use adapters made for the same encoder")
        folder = encoders.pop()
        key = (tuple((str(f), f.stat().st_mtime_ns) for f in files), str(folder))
        kind = _encoder_kind(folder)
        if (kind == "siglip_vision_model") != sd3 and (sd3 or kind.startswith("siglip")):
            needs = "a SigLIP vision encoder" if sd3 else "a CLIP vision encoder"
            raise InputError(f"IP-Adapter {files[0].name} does not fit this {info.family} model: its image encoder "
                             f"{folder} is a {kind or 'model of no known kind'}, and this family's adapters take {needs}")
        encoder = _encoder(folder, unet.dtype, unet.device, siglip=sd3)
        if getattr(unet, _LOADED, None) != key:
            if getattr(unet, _LOADED, None) is not None:
                _unload(pipe)
                setattr(unet, _LOADED, None)
            _register_encoder(pipe, encoder)
            try:
                if sd3:  # one adapter, its state dict as such
                    pipe.load_ip_adapter(_state_dict(files[0]), subfolder="", weight_name=files[0].name,
                                         image_encoder_folder=None)
                else:
                    pipe.load_ip_adapter([_state_dict(f) for f in files], subfolder="",
                                         weight_name=[f.name for f in files], **_no_encoder_argument(pipe))
            except (ValueError, KeyError, RuntimeError, IndexError) as exc:
                _unload(pipe)
                raise InputError(f"IP-Adapter {files[0].name} does not fit this model ({one_line(exc)})") from None
            unet.to(unet.device)
            setattr(unet, _LOADED, key)
        _register_encoder(pipe, encoder)
        pipe.set_ip_adapter_scale(active[0].weight if sd3 else [a.weight for a in active])


def _unload(pipe: Any) -> None:
    """The denoiser's own attention back. A FLUX.1 pipeline without the IP-Adapter mixin (the ControlNet inpaint
    one) shares the transformer an adapter was loaded into by another: the mixin's unloading works on it too."""
    if hasattr(pipe, "unload_ip_adapter"):
        pipe.unload_ip_adapter()
        return
    from diffusers.loaders import FluxIPAdapterMixin

    FluxIPAdapterMixin.unload_ip_adapter(pipe)


def _no_encoder_argument(pipe: Any) -> dict[str, None]:
    """The loader's argument that says "do not fetch an encoder" (ours is registered): its name differs by mixin."""
    import inspect

    parameters = inspect.signature(pipe.load_ip_adapter).parameters
    name = "image_encoder_folder" if "image_encoder_folder" in parameters else "image_encoder_pretrained_model_name_or_path"
    return {name: None}


def _register_encoder(pipe: Any, encoder: Any) -> None:
    """The encoder and its image processor on `pipe` (pipelines derived from the same model each need them)."""
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    if getattr(pipe, "image_encoder", None) is not encoder:
        size = encoder.config.image_size
        # The PIL processors: the default ones need torchvision.
        if type(encoder).__name__ == "SiglipVisionModel":  # SD3: resized to the square it was trained on
            processor = SiglipImageProcessorPil(size={"height": size, "width": size})
        else:
            processor = CLIPImageProcessorPil(size=size, crop_size=size)
        pipe.register_modules(image_encoder=encoder, feature_extractor=processor)


def ip_adapter_arguments(pipe: Any, adapters: Sequence[ImagePrompt], call: set[str]) -> dict[str, Any]:
    """`ip_adapter_image`: per active adapter, its reference images (several are averaged in by the model)."""
    from PIL import Image

    active = [a for a in adapters if a.weight != 0]
    if not active:
        return {}
    if "ip_adapter_image" not in call:
        raise InputError(f"{type(pipe).__name__} takes no IP-Adapter image: leave out --ip-adapter for this task")
    for adapter in active:
        if not adapter.images:
            raise InputError(f"IP-Adapter {adapter.model} has no reference image: give it image=FILE")
    if type(getattr(pipe, "transformer", None)).__name__ == "SD3Transformer2DModel":
        return {"ip_adapter_image": Image.fromarray(active[0].images[0])}  # SD3: one adapter, one image
    return {"ip_adapter_image": [[Image.fromarray(image) for image in a.images] for a in active]}
