"""Stable Diffusion 3 and 3.5: an MMDiT with three text encoders (two CLIPs and T5), flow matching.

Real classifier-free guidance (a negative pass; `--guidance-scale` 7 for SD3, 3.5 for 3.5). No
inpainting-specific checkpoint exists: SD3's inpainting pipeline blends the known latents back at every
step. Sizes are multiples of 16 (VAE 8 x patch 2). 3.5 is told from 3 by its normalised attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canvaslab.engines.diffusion.families.base import CheckpointHeader, ModelAlias, ModelKind
from canvaslab.engines.diffusion.families.dit import TransformerFamily, tensor_names


class SD3(TransformerFamily):
    name = "sd3"
    label = "Stable Diffusion 3"
    transformer_class = "SD3Transformer2DModel"
    guidance = "cfg"
    gpu_dtype = "fp16"  # SD3's own releases are fp16
    default_steps = 28
    default_guidance = 7.0
    variant_defaults = {"sd3": (28, 7.0), "sd35": (28, 3.5)}
    index_classes = {
        "StableDiffusion3Pipeline": ("txt2img", "sd3"),
        "StableDiffusion3InpaintPipeline": ("txt2img", "sd3"),
        "StableDiffusion3Img2ImgPipeline": ("txt2img", "sd3"),
    }
    pipelines = {
        ("txt2img", "txt2img"): "StableDiffusion3Pipeline",
        ("txt2img", "inpaint"): "StableDiffusion3InpaintPipeline",  # latent blending
    }
    # ControlNets: generate with any SD3 ControlNet; inpaint only with an inpainting one (alimama-creative's
    # SD3-Controlnet-Inpainting: the masked image's latents + the mask as its input), which the pipeline feeds
    # from control_image + control_mask; it starts from noise (no denoising strength), the composite keeps
    # the unmasked pixels
    control_pipelines = {
        ("txt2img", "txt2img"): "StableDiffusion3ControlNetPipeline",
        ("txt2img", "inpaint"): "StableDiffusion3ControlNetInpaintingPipeline",
    }
    controlnet_classes = ("SD3ControlNetModel",)
    control_inpaint = "mask"
    aliases = (
        ModelAlias("sd3-medium", "stabilityai/stable-diffusion-3-medium-diffusers", "sd3", "txt2img", 1024,
                   "Stable Diffusion 3 medium; inpaints by latent blending"),
        ModelAlias("sd35-medium", "stabilityai/stable-diffusion-3.5-medium", "sd3", "txt2img", 1024,
                   "Stable Diffusion 3.5 medium; inpaints by latent blending"),
        ModelAlias("sd35-large", "stabilityai/stable-diffusion-3.5-large", "sd3", "txt2img", 1024,
                   "Stable Diffusion 3.5 large; inpaints by latent blending"),
    )

    @classmethod
    def refine(cls, kind: ModelKind, variant: str, transformer: Mapping[str, Any],
               index: Mapping[str, Any]) -> tuple[ModelKind, str]:
        return kind, "sd35" if transformer.get("qk_norm") else "sd3"

    @classmethod
    def claims_checkpoint(cls, header: CheckpointHeader) -> bool:
        names = tensor_names(header)
        return ("joint_blocks.0.context_block.adaLN_modulation.1.bias" in names
                or ("pos_embed.pos_embed" in names and "transformer_blocks.0.norm1_context.linear.weight" in names))
