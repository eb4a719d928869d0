"""The final export: something inference loads as is, written atomically to `OUTPUT/final/`.

- `lora` (default in lora mode): `pytorch_lora_weights.safetensors` in diffusers' LoRA format, which
  `canvaslab inpaint|edit --lora` and diffusers' `load_lora_weights` read. When training widened
  conv_in (a 4-channel base turned into an inpainting or editing model), the file also carries the
  trained conv_in (`lora.WIDENED_PREFIX` keys, which diffusers ignores), so `--model BASE --lora FILE`
  just works in canvaslab; for plain diffusers, which cannot widen a UNet from a LoRA, the folder is
  also the complete widened model (trained conv_in, LoRA not merged): `from_pretrained(final)` then
  `load_lora_weights(final)`.
- `diffusers` (default in partial/full mode): a complete diffusers folder with the trained weights
  (LoRA merged when trained with one), loadable by `--model OUTPUT/final` and `from_pretrained`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from canvaslab.errors import InputError
from canvaslab.train.components import Components
from canvaslab.train.config import TrainConfig
from canvaslab.train.loop import fresh_staging, publish_folder
from canvaslab.train.validation import build_pipeline

LORA_FILE = "pytorch_lora_weights.safetensors"


def export_kind(config: TrainConfig) -> str:
    if config.export == "auto":
        return "lora" if config.train.mode == "lora" else "diffusers"
    if config.export == "lora" and config.train.mode != "lora":
        raise InputError(f"export=lora needs train.mode=lora (this run trains in {config.train.mode} mode); use export=diffusers")
    return config.export


def export_model(config: TrainConfig, components: Components, accelerator: Any) -> Path:
    final = config.output_dir / "final"
    staging = fresh_staging(final)
    kind = export_kind(config)
    unet = accelerator.unwrap_model(components.unet)
    encoders = [accelerator.unwrap_model(e) for e in components.text_encoders]
    if kind == "lora":
        _save_lora(staging, components, unet, encoders, config)
        if components.expanded:
            _save_pipeline(staging, components, _without_lora(unet), [_without_lora(e) for e in encoders])
    else:
        _save_pipeline(staging, components, _merged(unet), [_merged(e) for e in encoders])
    publish_folder(staging, final)
    return final


def _has_lora(module: Any) -> bool:
    return bool(getattr(module, "peft_config", None))


def _merged(module: Any) -> Any:
    """A copy with the LoRA folded into the weights (the module itself when it has none)."""
    if not _has_lora(module):
        return module
    clone = copy.deepcopy(module)
    if hasattr(clone, "fuse_lora"):  # diffusers models
        clone.fuse_lora()
        clone.unload_lora()
        return clone
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, child in list(clone.named_modules()):  # transformers text encoders with add_adapter
        if isinstance(child, BaseTunerLayer):
            child.merge()
    return _strip_lora(clone)


def _without_lora(module: Any) -> Any:
    if not _has_lora(module):
        return module
    clone = copy.deepcopy(module)
    if hasattr(clone, "unload_lora"):
        clone.unload_lora()
        return clone
    return _strip_lora(clone)


def _strip_lora(module: Any) -> Any:
    """Replace every LoRA layer by its (possibly merged) base layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, BaseTunerLayer):
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = False
    return module


def _save_lora(folder: Path, components: Components, unet: Any, encoders: list[Any], config: TrainConfig) -> None:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    pipe_cls = type(build_pipeline(components, unet=_without_lora(unet)))
    modules = {"unet": unet}
    if config.train.text_encoder:
        modules.update(zip(["text_encoder", "text_encoder_2"], encoders))
    layers: dict[str, Any] = {}
    for name, module in modules.items():
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
        layers[f"{name}_lora_adapter_metadata"] = adapter_metadata(module)
    pipe_cls.save_lora_weights(str(folder), weight_name=LORA_FILE, **layers)
    if components.expanded:
        _carry_conv_in(folder / LORA_FILE, unet)


def adapter_metadata(module: Any) -> dict[str, Any]:
    """The trained adapter's shape and scale, for the file's `lora_adapter_metadata` (diffusers' format for it).

    Without it a loader cannot know lora_alpha and applies B @ A at scale 1 instead of alpha / rank.
    Only the fields diffusers itself infers when a file has no metadata are written, so a file made
    with this peft also loads with an older one (the full `LoraConfig.to_dict()` names fields it lacks).
    """
    (lora,) = module.peft_config.values()  # one adapter per trained module
    return {"r": lora.r, "lora_alpha": lora.lora_alpha, "target_modules": sorted(lora.target_modules),
            "rank_pattern": dict(lora.rank_pattern), "alpha_pattern": dict(lora.alpha_pattern),
            "use_dora": lora.use_dora, "lora_bias": lora.lora_bias}


def _carry_conv_in(path: Path, unet: Any) -> None:
    """Add the trained, widened conv_in to the LoRA file (see engines/diffusion/lora.py): canvaslab swaps it in
    when the LoRA is used; diffusers' loader ignores these keys."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from canvaslab.engines.diffusion.lora import WIDENED_PREFIX

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    conv = _without_lora(unet).conv_in
    tensors[WIDENED_PREFIX + "conv_in.weight"] = conv.weight.detach().cpu().contiguous()
    if conv.bias is not None:
        tensors[WIDENED_PREFIX + "conv_in.bias"] = conv.bias.detach().cpu().contiguous()
    save_file(tensors, str(path), metadata={**metadata, "canvaslab_in_channels": str(conv.in_channels)})


def _save_pipeline(folder: Path, components: Components, unet: Any, encoders: list[Any]) -> None:
    pipe = build_pipeline(components, unet=unet, text_encoders=encoders)
    pipe.save_pretrained(str(folder), safe_serialization=True)
