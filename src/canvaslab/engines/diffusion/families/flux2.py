"""FLUX.2 Klein: a small FLUX.2 transformer with a Qwen3 text encoder; text to image, editing with
reference images, and inpainting (Flux2KleinInpaintPipeline).

The distilled Klein (4 steps) takes no guidance; Klein base runs real CFG against an empty prompt
(`--guidance-scale`, 4 by default, 50 steps). `model_index.json`'s `is_distilled` tells them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canvaslab.core.notices import notice
from canvaslab.engines.diffusion.families.base import CheckpointHeader, ModelAlias, ModelInfo, ModelKind
from canvaslab.engines.diffusion.families.dit import TransformerFamily, tensor_names


class Flux2(TransformerFamily):
    name = "flux2"
    label = "FLUX.2 Klein"
    transformer_class = "Flux2Transformer2DModel"
    guidance = "cfg"
    default_steps = 50
    default_guidance = 4.0
    variant_defaults = {"klein": (4, 1.0), "klein-base": (50, 4.0)}
    index_classes = {
        "Flux2KleinPipeline": ("txt2img", "klein"),
        "Flux2KleinInpaintPipeline": ("txt2img", "klein"),
    }
    pipelines = {
        ("txt2img", "txt2img"): "Flux2KleinPipeline",
        ("txt2img", "edit"): "Flux2KleinPipeline",  # the input image as a reference
        ("txt2img", "inpaint"): "Flux2KleinInpaintPipeline",
    }
    aliases = (
        ModelAlias("flux2-klein", "black-forest-labs/FLUX.2-klein-4B", "flux2", "txt2img", 1024,
                   "FLUX.2 Klein 4B (distilled, 4 steps): text to image, reference editing, inpainting"),
        ModelAlias("flux2-klein-base", "black-forest-labs/FLUX.2-klein-base-4B", "flux2", "txt2img", 1024,
                   "FLUX.2 Klein base 4B (guidance 4, 50 steps)"),
    )

    @classmethod
    def refine(cls, kind: ModelKind, variant: str, transformer: Mapping[str, Any],
               index: Mapping[str, Any]) -> tuple[ModelKind, str]:
        return kind, "klein" if index.get("is_distilled", True) else "klein-base"

    @classmethod
    def claims_checkpoint(cls, header: CheckpointHeader) -> bool:
        names = tensor_names(header)
        return ("single_stream_modulation.lin.weight" in names
                or "single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight" in names)

    @classmethod
    def guidance_arguments(cls, info: ModelInfo, guidance_scale: float, negative_prompt: str, call: set[str],
                           options: Mapping[str, Any]) -> dict[str, Any]:
        if negative_prompt:
            notice(f"{cls.label} takes no negative prompt (its guidance runs against an empty prompt): ignored")
        if info.variant == "klein":
            return {}  # step-distilled: the pipeline ignores guidance
        return {"guidance_scale": guidance_scale} if "guidance_scale" in call else {}
