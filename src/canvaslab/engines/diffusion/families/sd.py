"""Stable Diffusion 1.x, 2.x and XL: UNet families, told apart by their text encoders.

A UNet's input channels say what a checkpoint was trained for: 4 noise latents (text to image), plus
mask + masked image (9: inpainting), or plus the latents of 1..N images to edit (4 + 4N; N = 1 is
InstructPix2Pix). A plain 4-channel UNet inpaints through the inpainting pipeline too: diffusers then
re-noises the known region's latents and blends them in after every step (as A1111 does).

Single files in the original (CompVis/SGM) layout are recognised by their tensor names; the family by
the text encoder's weights (OpenCLIP for 2.x, two encoders for XL) or, in a UNet-only file, by the
cross-attention width. Prediction type (epsilon or v) comes from the strongest evidence available,
see `single_file_prediction`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from canvaslab.engines.diffusion.families.base import (
    KIND_WORDS,
    CheckpointHeader,
    Family,
    ModelAlias,
    ModelInfo,
    ModelKind,
    Task,
    config_file,
    vae_factor,
)
from canvaslab.errors import EngineError, InputError, ModelNotAvailableError

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"

# Multi-frame editing (4 + 4N channels, N > 1) has no diffusers pipeline: canvaslab's own runs it.
FRAME_EDIT_PIPELINE = "StableDiffusionFrameEditPipeline"


def kind_of_channels(in_channels: int, label: str) -> tuple[ModelKind, int]:
    """UNet input channels -> (kind, conditioning frames): 4 noise latents, plus mask + masked image
    (9), or plus the latents of 1..N images to edit (4 + 4N; N = 1 is InstructPix2Pix)."""
    if in_channels == 4:
        return "txt2img", 0
    if in_channels == 9:
        return "inpaint", 0
    if in_channels > 4 and in_channels % 4 == 0:
        return "edit", (in_channels - 4) // 4
    raise InputError(
        f"model {label} has a UNet with {in_channels} input channels, which canvaslab does not support "
        "(4 = text to image, 9 = inpainting, 4+4N = image editing)"
    )


class StableDiffusion(Family):
    """What SD 1.x, 2.x and XL share; the subclasses differ in names, resolution and pipeline classes."""

    denoiser = "unet"
    multiple = 8  # the VAE downsamples by 8
    scheduler_kind = "ddpm"
    guidance = "cfg"
    default_steps = 20
    default_guidance = 7.5
    gpu_dtype = "fp16"
    # (kind, task) -> class; a plain 4-channel UNet inpaints through the inpainting pipeline (latent blending)
    pipelines: ClassVar[Mapping[tuple[ModelKind, Task], str]] = {
        ("txt2img", "txt2img"): "StableDiffusionPipeline",
        ("txt2img", "inpaint"): "StableDiffusionInpaintPipeline",
        ("inpaint", "inpaint"): "StableDiffusionInpaintPipeline",
        ("edit", "edit"): "StableDiffusionInstructPix2PixPipeline",
    }
    # ControlNets: a plain or inpainting UNet inpaints with ControlNets too (the plain one by latent blending)
    control_pipelines: ClassVar[Mapping[tuple[ModelKind, Task], str]] = {
        ("txt2img", "txt2img"): "StableDiffusionControlNetPipeline",
        ("txt2img", "inpaint"): "StableDiffusionControlNetInpaintPipeline",
        ("inpaint", "inpaint"): "StableDiffusionControlNetInpaintPipeline",
    }
    controlnet_classes = ("ControlNetModel",)
    control_modes = True
    control_inpaint = "minus-one"
    # which alias supplies the component configs for a single file that came without `config=`
    default_configs: ClassVar[Mapping[ModelKind, str]] = {}

    @classmethod
    def claims_folder(cls, folder: Path, index: Mapping[str, Any]) -> bool:
        return "unet" in index and which_sd(index, config_file(folder, "unet", "config.json")) == cls.name

    @classmethod
    def claims_checkpoint(cls, header: CheckpointHeader) -> bool:
        return UNET_IN in header.shapes and checkpoint_sd_family(header) == cls.name

    @classmethod
    def detect_folder(cls, folder: Path, index: Mapping[str, Any], name: str) -> ModelInfo:
        unet = config_file(folder, "unet", "config.json")
        if not unet:
            raise ModelNotAvailableError(f"model {name!r} at {folder} has no unet/config.json; is the folder complete?")
        in_channels = int(unet.get("in_channels", 4))
        kind, frames = kind_of_channels(in_channels, repr(name))
        scheduler = config_file(folder, "scheduler", "scheduler_config.json")
        size = unet.get("sample_size", 64)
        return ModelInfo(
            family=cls.name,
            kind=kind,
            in_channels=in_channels,
            prediction_type=scheduler.get("prediction_type", "epsilon"),
            native_resolution=int(size[0] if isinstance(size, (list, tuple)) else size) * vae_factor(folder),
            condition_frames=frames,
            variant=turbo_variant(name, folder, scheduler),
        )

    @classmethod
    def defaults(cls, info: ModelInfo) -> tuple[int, float]:
        # SD/SDXL Turbo are adversarially distilled: one step (up to 4), no guidance (their cards' settings)
        return (1, 0.0) if info.variant == "turbo" else (cls.default_steps, cls.default_guidance)

    @classmethod
    def detect_checkpoint(cls, path: Path, header: CheckpointHeader, config: Path | None,
                          config_from_user: bool) -> ModelInfo:
        in_channels = header.shapes[UNET_IN][1]
        kind, frames = kind_of_channels(in_channels, str(path))
        prediction = single_file_prediction(cls.name, path, header, kind, config if config_from_user else None)
        if config_from_user and config is not None:
            unet = config_file(config, "unet", "config.json")
            size = unet.get("sample_size", 64)
            resolution = int(size[0] if isinstance(size, (list, tuple)) else size) * vae_factor(config)
        elif cls.name == "sd2" and prediction == "v_prediction":
            resolution = 768  # SD 2.x v-models were trained at 768 px
        else:
            resolution = cls.native_resolution
        return ModelInfo(cls.name, kind, in_channels, prediction, resolution, frames)

    @classmethod
    def load_single_file(cls, pipeline: type, path: Path, config: str, info: ModelInfo, kwargs: dict[str, Any]) -> Any:
        """An original-layout checkpoint (every component inside), configs from `config`."""
        from diffusers import UNet2DConditionModel

        kwargs = dict(kwargs, config=config)
        config_unet = config_file(Path(config), "unet", "config.json") if Path(config).is_dir() else {}
        if config_unet and config_unet.get("in_channels") != info.in_channels:
            # A config folder from a sibling model (e.g. SD 1.5 for an SD 1.5 inpainting file): the UNet
            # takes its channel count from the weights, everything else from the config.
            kwargs["unet"] = UNet2DConditionModel.from_single_file(
                str(path), config=config, subfolder="unet", in_channels=info.in_channels,
                dtype=kwargs["dtype"], local_files_only=kwargs["local_files_only"],
            )
        return pipeline.from_single_file(str(path), **kwargs)

    @classmethod
    def checkpoint_kind(cls, header: CheckpointHeader, path: Path) -> ModelKind:
        return kind_of_channels(header.shapes[UNET_IN][1], str(path))[0]

    @classmethod
    def pipeline_class_name(cls, info: ModelInfo, task: Task, *, label: str = "the model") -> str:
        name = cls.pipelines.get((info.kind, task))
        if name is None:
            raise InputError(
                f"{label} is {KIND_WORDS[info.kind]} model ({info.in_channels}-channel UNet) and cannot run task "
                f"{task!r}; pick a model made for it (e.g. {cls.suggest(task)})"
            )
        if info.kind == "edit" and info.condition_frames > 1:
            if cls.name == "sdxl":
                raise EngineError(
                    f"{label} is an SDXL model editing from {info.condition_frames} conditioning frames "
                    f"({info.in_channels}-channel UNet); multi-frame editing runs SD 1.x/2.x models only so far"
                )
            return FRAME_EDIT_PIPELINE
        return name

    @classmethod
    def suggest(cls, task: Task) -> str:
        kind: ModelKind = "txt2img" if task == "txt2img" else ("edit" if task == "edit" else "inpaint")
        return cls.default_configs.get(kind) or SD1.default_configs[kind]


class SD1(StableDiffusion):
    name = "sd1"
    label = "Stable Diffusion 1.x"
    native_resolution = 512
    aliases = (
        ModelAlias("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd1", "txt2img", 512,
                   "Stable Diffusion 1.5, text to image; inpaints by latent blending"),
        ModelAlias("sd15-inpaint", "stable-diffusion-v1-5/stable-diffusion-inpainting", "sd1", "inpaint", 512,
                   "Stable Diffusion 1.5 inpainting (9-channel UNet)"),
        ModelAlias("instruct-pix2pix", "timbrooks/instruct-pix2pix", "sd1", "edit", 512,
                   "InstructPix2Pix: edit an image from an instruction"),
    )
    default_configs = {"txt2img": "sd15", "inpaint": "sd15-inpaint", "edit": "instruct-pix2pix"}


class SD2(StableDiffusion):
    name = "sd2"
    label = "Stable Diffusion 2.x"
    native_resolution = 512
    aliases = (
        ModelAlias("sd21", "stabilityai/stable-diffusion-2-1", "sd2", "txt2img", 768,
                   "Stable Diffusion 2.1, text to image, v-prediction"),
        ModelAlias("sd2-inpaint", "stabilityai/stable-diffusion-2-inpainting", "sd2", "inpaint", 512,
                   "Stable Diffusion 2 inpainting (9-channel UNet)"),
    )
    default_configs = {"txt2img": "sd21", "inpaint": "sd2-inpaint"}


class SDXL(StableDiffusion):
    name = "sdxl"
    label = "Stable Diffusion XL"
    native_resolution = 1024
    pipeline_upcasts_vae = True
    pipelines = {
        ("txt2img", "txt2img"): "StableDiffusionXLPipeline",
        ("txt2img", "inpaint"): "StableDiffusionXLInpaintPipeline",
        ("inpaint", "inpaint"): "StableDiffusionXLInpaintPipeline",
        ("edit", "edit"): "StableDiffusionXLInstructPix2PixPipeline",
    }
    aliases = (
        ModelAlias("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", "txt2img", 1024,
                   "Stable Diffusion XL base 1.0, text to image"),
        ModelAlias("sdxl-inpaint", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "sdxl", "inpaint", 1024,
                   "Stable Diffusion XL 1.0 inpainting 0.1 (9-channel UNet)"),
        ModelAlias("sdxl-turbo", "stabilityai/sdxl-turbo", "sdxl", "txt2img", 512,
                   "SDXL Turbo: 1-4 steps, no guidance"),
    )
    control_pipelines = {
        ("txt2img", "txt2img"): "StableDiffusionXLControlNetPipeline",
        ("txt2img", "inpaint"): "StableDiffusionXLControlNetInpaintPipeline",
        ("inpaint", "inpaint"): "StableDiffusionXLControlNetInpaintPipeline",
    }
    # diffusers' Union inpaint pipeline takes a plain (4-channel) UNet only, as ProMax is used: on SDXL base
    union_pipelines = {
        ("txt2img", "txt2img"): "StableDiffusionXLControlNetUnionPipeline",
        ("txt2img", "inpaint"): "StableDiffusionXLControlNetUnionInpaintPipeline",
    }
    controlnet_classes = ("ControlNetModel", "ControlNetUnionModel")
    control_inpaint = "black"  # ControlNet Union ProMax: the hole is black in the control image
    default_configs = {"txt2img": "sdxl", "inpaint": "sdxl-inpaint"}


# -- which SD: folders ---------------------------------------------------------------------------


def turbo_variant(name: str, folder: Path, scheduler: Mapping[str, Any]) -> str:
    """"turbo" for SD-Turbo / SDXL Turbo: named so (alias, hub id or folder) and sampling with trailing
    timesteps, as their own scheduler configs do; "" otherwise."""
    named = "turbo" in f"{name} {folder.name} {folder.parent.parent.name}".lower()  # hub snapshots: models--x--y/snapshots/<rev>
    return "turbo" if named and scheduler.get("timestep_spacing") == "trailing" else ""


def which_sd(index: Mapping[str, Any], unet: Mapping[str, Any]) -> str:
    """sd1, sd2 or sdxl, from model_index.json and the UNet's config."""
    second_encoder = index.get("text_encoder_2")
    if (isinstance(second_encoder, list) and second_encoder[0]) or unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    # SD 2.x: OpenCLIP's 1024-wide text features and linear transformer projections.
    if unet.get("cross_attention_dim") == 1024 or unet.get("use_linear_projection"):
        return "sd2"
    return "sd1"


# -- which SD: single files ----------------------------------------------------------------------


def checkpoint_sd_family(header: CheckpointHeader) -> str | None:
    """sd1 / sd2 / sdxl for an original-layout SD checkpoint, or None when the width is unknown."""
    keys = header.shapes
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"  # OpenCLIP text encoder
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    # A UNet-only file: the cross-attention width tells the text encoder it was trained with.
    context = next((s[1] for k, s in keys.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    if "model.diffusion_model.label_emb.0.0.weight" in keys or context in (1280, 2048):
        return "sdxl"
    if context in (768, 1024):
        return "sd1" if context == 768 else "sd2"
    return None


def single_file_prediction(family: str, path: Path, header: CheckpointHeader, kind: ModelKind,
                           user_config: Path | None) -> str:
    """epsilon or v_prediction, from the strongest evidence available.

    1. Markers in or next to the checkpoint: a `v_pred` tensor (ComfyUI), a `prediction_type`
       metadata entry (kohya/ModelSpec), or an A1111 sidecar `<name>.yaml` with `parameterization: v`.
    2. A config folder the user passed explicitly: its scheduler's prediction type.
    3. The usual heuristic: SD 2.x text-to-image checkpoints are the 768-v models unless they are the
       512 base (trained 875000 steps, or "512"/"base" in the file name); everything else is epsilon.
    """
    marked = prediction_marker(path, header)
    if marked:
        return marked
    if user_config is not None:
        return config_file(user_config, "scheduler", "scheduler_config.json").get("prediction_type", "epsilon")
    if family == "sd2" and kind == "txt2img":
        stem = path.stem.lower()
        base = header.global_step == 875000 or "512" in stem or "base" in stem
        return "epsilon" if base else "v_prediction"
    return "epsilon"


def prediction_marker(path: Path, header: CheckpointHeader) -> str | None:
    if "v_pred" in header.shapes:
        return "v_prediction"
    for key, value in header.metadata.items():
        if key.endswith("prediction_type"):
            value = str(value).lower()
            if value in ("v", "v_prediction", "v-prediction"):
                return "v_prediction"
            if value in ("epsilon", "eps"):
                return "epsilon"
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8", errors="replace")
        if re.search(r"""parameterization:\s*["']?v["']?\s*$""", text, re.MULTILINE):
            return "v_prediction"
    return None
