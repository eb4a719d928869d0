"""Z-Image (Turbo): a single-stream DiT with a Qwen3 text encoder; text to image and inpainting.

Turbo is step-distilled: 8-9 steps at guidance 0 (no CFG pass); `--guidance-scale` above 0 turns real
CFG on, with `--negative-prompt`. Sizes are multiples of 16.
"""

from __future__ import annotations

from canvaslab.engines.diffusion.families.base import CheckpointHeader, ModelAlias
from canvaslab.engines.diffusion.families.dit import TransformerFamily, tensor_names


class ZImage(TransformerFamily):
    name = "z-image"
    label = "Z-Image"
    transformer_class = "ZImageTransformer2DModel"
    guidance = "cfg"
    default_steps = 9
    default_guidance = 0.0
    index_classes = {
        "ZImagePipeline": ("txt2img", "turbo"),
        "ZImageInpaintPipeline": ("txt2img", "turbo"),
        "ZImageImg2ImgPipeline": ("txt2img", "turbo"),
    }
    pipelines = {
        ("txt2img", "txt2img"): "ZImagePipeline",
        ("txt2img", "inpaint"): "ZImageInpaintPipeline",
    }
    aliases = (
        ModelAlias("z-image-turbo", "Tongyi-MAI/Z-Image-Turbo", "z-image", "txt2img", 1024,
                   "Z-Image Turbo: 8-9 steps, no guidance; text to image and inpainting"),
    )

    @classmethod
    def claims_checkpoint(cls, header: CheckpointHeader) -> bool:
        names = tensor_names(header)
        return "cap_embedder.0.weight" in names and ("x_pad_token" in names or "layers.0.adaLN_modulation.0.weight" in names)
