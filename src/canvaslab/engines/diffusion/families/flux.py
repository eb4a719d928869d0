"""FLUX.1 (dev, schnell, Fill): one transformer class, told apart by its input width and guidance input.

Fill (the inpainting model) takes 384 input channels: 64 packed latent channels, 64 of the masked image
and 256 of the mask (8x8 pixels per latent, 2x2 packed). dev and Fill were distilled to take the
guidance value as an input (`--guidance-scale` is that value: 3.5 for dev, 30 for Fill; one pass per
step); schnell takes none. A negative prompt needs real CFG, which FLUX.1 pipelines offer as
`true_cfg_scale` (`--opt true_cfg_scale=4`, twice the cost). Plain dev/schnell inpaint by latent blending
(FluxInpaintPipeline). Kontext shares the transformer but not the pipelines: see flux_kontext.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from canvaslab.core.notices import notice
from canvaslab.engines.diffusion.families.base import CheckpointHeader, ModelAlias, ModelInfo, ModelKind
from canvaslab.engines.diffusion.families.dit import TransformerFamily, has_any, shape_of, tensor_names
from canvaslab.errors import InputError

FILL_CHANNELS = 384  # 64 latent + 64 masked image + 256 mask
CONTROL_CHANNELS = 128  # FLUX.1 Depth/Canny: latent + control image (ControlNet-style, not driven here)
GUIDANCE_TENSORS = ("time_text_embed.guidance_embedder.linear_1.weight", "guidance_in.in_layer.weight")


class Flux(TransformerFamily):
    name = "flux"
    label = "FLUX.1"
    transformer_class = "FluxTransformer2DModel"
    guidance = "distilled"
    default_steps = 28
    default_guidance = 3.5
    variant_defaults = {"dev": (28, 3.5), "fill": (50, 30.0), "schnell": (4, 0.0)}
    index_classes = {
        "FluxPipeline": ("txt2img", "dev"),
        "FluxInpaintPipeline": ("txt2img", "dev"),
        "FluxImg2ImgPipeline": ("txt2img", "dev"),
        "FluxFillPipeline": ("inpaint", "fill"),
    }
    pipelines = {
        ("txt2img", "txt2img"): "FluxPipeline",
        ("txt2img", "inpaint"): "FluxInpaintPipeline",  # latent blending
        ("inpaint", "inpaint"): "FluxFillPipeline",
    }
    # ControlNets (InstantX / XLabs / Shakker-Labs FLUX.1 ControlNets) on dev/schnell; Fill has none in diffusers.
    # Inpaint blends latents like FluxInpaintPipeline; the inpaint preprocessor blacks out the hole.
    control_pipelines = {
        ("txt2img", "txt2img"): "FluxControlNetPipeline",
        ("txt2img", "inpaint"): "FluxControlNetInpaintPipeline",
    }
    union_pipelines = control_pipelines  # FLUX.1 Union models (control modes) run in the same pipelines
    controlnet_classes = ("FluxControlNetModel",)
    aliases = (
        ModelAlias("flux-dev", "black-forest-labs/FLUX.1-dev", "flux", "txt2img", 1024,
                   "FLUX.1 dev, text to image (guidance-distilled); inpaints by latent blending"),
        ModelAlias("flux-schnell", "black-forest-labs/FLUX.1-schnell", "flux", "txt2img", 1024,
                   "FLUX.1 schnell: 1-4 steps, no guidance"),
        ModelAlias("flux-fill", "black-forest-labs/FLUX.1-Fill-dev", "flux", "inpaint", 1024,
                   "FLUX.1 Fill dev: inpainting and outpainting (guidance 30, 50 steps)"),
    )

    @classmethod
    def refine(cls, kind: ModelKind, variant: str, transformer: Mapping[str, Any],
               index: Mapping[str, Any]) -> tuple[ModelKind, str]:
        channels = int(transformer.get("in_channels") or 64)
        if channels == FILL_CHANNELS:
            return "inpaint", "fill"
        if channels == CONTROL_CHANNELS:
            raise InputError("this FLUX.1 model takes a control image (Depth/Canny, 128 input channels), which "
                             "canvaslab does not drive yet; use FLUX.1 Fill for inpainting")
        if variant == "dev" and transformer.get("guidance_embeds") is False:
            return kind, "schnell"
        return kind, variant

    @classmethod
    def claims_checkpoint(cls, header: CheckpointHeader) -> bool:
        names = tensor_names(header)
        diffusers_layout = "x_embedder.weight" in names and "single_transformer_blocks.0.proj_mlp.weight" in names
        original_layout = "double_blocks.0.img_attn.norm.key_norm.scale" in names
        return (diffusers_layout or original_layout) and "single_stream_modulation.lin.weight" not in names

    @classmethod
    def checkpoint_in_channels(cls, header: CheckpointHeader) -> int:
        shape = shape_of(header, "x_embedder.weight") or shape_of(header, "img_in.weight")
        return int(shape[1]) if shape and len(shape) == 2 else 0

    @classmethod
    def checkpoint_variant(cls, path: Path, header: CheckpointHeader, base: ModelInfo | None) -> tuple[ModelKind, str]:
        channels = cls.checkpoint_in_channels(header)
        if channels == FILL_CHANNELS:
            return "inpaint", "fill"
        if channels == CONTROL_CHANNELS:
            raise InputError(f"{path} is a FLUX.1 control model (Depth/Canny), which canvaslab does not drive yet")
        if not has_any(tensor_names(header), GUIDANCE_TENSORS):
            return "txt2img", "schnell"
        # Kontext has dev's tensors exactly: only its base folder or its file name tells
        if (base is not None and base.variant == "kontext") or "kontext" in path.name.lower():
            return "edit", "kontext"
        return "txt2img", "dev"

    @classmethod
    def detect_checkpoint(cls, path: Path, header: CheckpointHeader, config: Path | None,
                          config_from_user: bool) -> ModelInfo:
        if config is not None:
            from canvaslab.engines.diffusion.families import family_of_folder
            from canvaslab.engines.diffusion.families.base import config_file

            index = config_file(config, "model_index.json")
            owner = family_of_folder(config, index)
            if owner is not None and owner.name == "flux-kontext" and cls.name == "flux":
                return owner.detect_checkpoint(path, header, config, config_from_user)
        return super().detect_checkpoint(path, header, config, config_from_user)

    @classmethod
    def family_for_variant(cls, variant: str) -> str:
        return "flux-kontext" if variant == "kontext" else "flux"

    @classmethod
    def guidance_arguments(cls, info: ModelInfo, guidance_scale: float, negative_prompt: str, call: set[str],
                           options: Mapping[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if "guidance_scale" in call:
            args["guidance_scale"] = guidance_scale  # schnell's transformer has no guidance input: ignored
        true_cfg = float(options.get("true_cfg_scale") or 1.0)
        if negative_prompt and "negative_prompt" in call:
            if true_cfg > 1.0:
                args.update(negative_prompt=negative_prompt, true_cfg_scale=true_cfg)
            else:
                notice(f"{cls.label} has distilled guidance: --negative-prompt takes effect only with "
                       "--opt true_cfg_scale=N (N > 1; twice the cost per step)")
        elif true_cfg > 1.0 and "true_cfg_scale" in call:
            args.update(negative_prompt=" ", true_cfg_scale=true_cfg)  # real CFG against an empty prompt
        return args
