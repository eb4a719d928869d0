"""The models a training run works on: loaded through the engines' loader, widened, made trainable.

`load_components` resolves the base model exactly as inference does (alias, cached hub id, folder,
single file; offline; one-sentence error when missing), then takes the modules out of the pipeline
so training mutations (wider conv_in, adapters) never leak into the inference cache.
`make_trainable` applies the training mode; `encode_text` and `add_time_ids` are the conditioning
the UNet needs for SD 1/2 and SDXL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from canvaslab.core.compat import check_compatible
from canvaslab.errors import InputError
from canvaslab.train.config import TrainConfig
from canvaslab.train.expand import expand_conv_in

# Attention projections: the `partial` mode trains these (self- and cross-attention), nothing else.
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class Components:
    family: str  # sd1 | sd2 | sdxl
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any  # DDPMScheduler: adds noise in training
    sample_scheduler: Any  # the model's own scheduler, for validation and export
    base_channels: int  # conv_in input channels of the base model before expansion
    frames: int  # edit: conditioning images; 0 for inpainting
    source_name: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def expanded(self) -> bool:
        return self.unet.config.in_channels != self.base_channels

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def pipeline_kind(self) -> str:
        return "inpaint" if self.frames == 0 else "edit"


def target_channels(config: TrainConfig, dataset_frames: int) -> int:
    if config.objective == "inpaint":
        return 9
    frames = config.model.frames or dataset_frames or 1
    if config.model.frames and dataset_frames and config.model.frames != dataset_frames:
        raise InputError(f"model.frames is {config.model.frames} but the dataset has {dataset_frames} input images per sample")
    return 4 + 4 * frames


def load_components(config: TrainConfig, dataset_frames: int) -> Components:
    """Base model modules in fp32 on the CPU, conv_in widened to the objective's layout."""
    from diffusers import DDPMScheduler

    from canvaslab.engines.diffusion.models import clear_pipeline_cache, load_pipeline, resolve_and_detect

    source, info = resolve_and_detect(config.model.base, config=config.model.config, cache_dir=config.model.cache_dir)
    in_channels = target_channels(config, dataset_frames)
    if info.family == "sdxl" and in_channels > 8 and config.objective == "edit":
        raise InputError("multi-frame editing (more than one conditioning image) trains SD 1.x/2.x models only so far; "
                         f"{source.name!r} is SDXL")
    # Inference may hold this model already, with its LoRAs loaded (one active) and another scheduler
    # set: load it afresh. And our modules are about to change: the inference cache must not keep them.
    clear_pipeline_cache()
    pipe = load_pipeline(source, task=info.kind, dtype="fp32", device="cpu")  # the task the base was made for
    clear_pipeline_cache()

    unet = pipe.unet
    base_channels = unet.config.in_channels
    expand_conv_in(unet, in_channels)
    encoders = [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if m is not None]
    tokenizers = [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if config.model.prediction_type:
        noise_scheduler.register_to_config(prediction_type=config.model.prediction_type)
    sample_scheduler = pipe.scheduler
    if config.model.prediction_type:
        sample_scheduler.register_to_config(prediction_type=config.model.prediction_type)
    return Components(
        family=info.family, unet=unet, vae=pipe.vae, text_encoders=encoders, tokenizers=tokenizers,
        noise_scheduler=noise_scheduler, sample_scheduler=sample_scheduler, base_channels=base_channels,
        frames=0 if config.objective == "inpaint" else (in_channels - 4) // 4, source_name=source.name,
    )


def make_trainable(components: Components, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Freeze what the mode does not train, add adapters, and return the trainable parameters.

    In every mode the widened conv_in is trained whole when channels were added: its new input
    weights start at zero and no adapter could learn them from a frozen zero base.
    """
    section = config.train
    unet = components.unet
    components.vae.requires_grad_(False)
    for encoder in components.text_encoders:
        encoder.requires_grad_(False)
    if section.mode == "full":
        unet.requires_grad_(True)
    else:
        unet.requires_grad_(False)
        if section.mode == "lora":
            if components.expanded and "conv_in" in section.lora.targets:
                raise InputError("the widened conv_in is trained whole (its new weights start at zero); "
                                 "remove conv_in from train.lora.targets")
            _add_lora(unet, section.lora.rank, section.lora.alpha, section.lora.dropout, section.lora.targets)
        else:
            for name, param in unet.named_parameters():
                if _is_attention_projection(name):
                    param.requires_grad_(True)
        if components.expanded:
            unet.conv_in.requires_grad_(True)
    if section.text_encoder:
        for encoder in components.text_encoders:
            if section.mode == "lora":
                _add_lora(encoder, section.lora.rank, section.lora.alpha, section.lora.dropout, section.lora.text_targets)
            else:
                encoder.requires_grad_(True)
    if section.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if section.text_encoder:
            for encoder in components.text_encoders:
                # transformers 5 renamed it; older versions only have the first name
                getattr(encoder, "activation_checkpointing_enable", encoder.gradient_checkpointing_enable)()
    for module in trained_modules(components, config):
        module.train()  # from_pretrained leaves models in eval mode: LoRA dropout would silently do nothing
    params = [p for module in trained_modules(components, config) for p in module.parameters() if p.requires_grad]
    if not params:
        raise InputError("nothing to train: the mode and targets select no parameters (check train.lora.targets)")
    return params


def trained_modules(components: Components, config: TrainConfig) -> list[Any]:
    return [components.unet] + (components.text_encoders if config.train.text_encoder else [])


def _is_attention_projection(name: str) -> bool:
    return (".attn1." in name or ".attn2." in name) and any(f".{p}." in name for p in ATTENTION_PROJECTIONS)


def _add_lora(module: Any, rank: int, alpha: float, dropout: float, targets: list[str]) -> None:
    check_compatible("peft")  # a known-broken transformers/peft pair: the pip fix in one line, before peft fails
    from peft import LoraConfig

    names = {name for name, _ in module.named_modules()}
    if not any(name == t or name.endswith(f".{t}") for name in names for t in targets):
        raise InputError(f"LoRA targets {targets} match no module of the {type(module).__name__}")
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian", target_modules=targets)
    module.add_adapter(lora)


# -- conditioning ------------------------------------------------------------------------------


def tokenize(components: Components, captions: list[str]) -> list[torch.Tensor]:
    """Token ids per tokenizer, padded to each tokenizer's length (77 for CLIP)."""
    return [
        tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        for tok in components.tokenizers
    ]


def encode_text(components: Components, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(encoder hidden states, pooled embeddings or None), as the diffusers pipelines compute them.

    SD 1/2: the last hidden state of the one encoder. SDXL: the penultimate hidden states of both
    encoders side by side, and the second encoder's projected pooled output.
    """
    ids = tokenize(components, captions)
    if components.family != "sdxl":
        return components.text_encoders[0](ids[0].to(device))[0], None
    states, pooled = [], None
    for encoder, tokens in zip(components.text_encoders, ids):
        out = encoder(tokens.to(device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder's pooled (projected) output
    return torch.cat(states, dim=-1), pooled


def add_time_ids(original: torch.Tensor, crop: torch.Tensor, target: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """SDXL micro-conditioning: (original h, w, crop top, left, target h, w) per sample."""
    target_hw = torch.tensor([target[1], target[0]], dtype=torch.float64).expand(original.shape[0], 2)
    return torch.cat([original.double(), crop.double(), target_hw], dim=1).to(dtype)
