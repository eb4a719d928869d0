"""Qwen-Image and Qwen-Image-Edit: a 20B MMDiT conditioned by Qwen2.5-VL, flow matching.

`--guidance-scale` is Qwen's `true_cfg_scale` (4 by default): real CFG, which the pipeline runs only
with a negative prompt, so an empty one is sent as " " (what Qwen's own examples do). The edit models
see the input image through the VL encoder and the VAE at about 1 Mpx whatever its size, and the edit
inpainting pipeline answers at that size: canvaslab scales the result back to the working size before
compositing. Their processor needs torchvision for its video part, which canvaslab never uses; without
torchvision it is rebuilt from the PIL image processor and the tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from canvaslab.engines.diffusion.families.base import CheckpointHeader, ModelAlias, ModelInfo, one_line
from canvaslab.engines.diffusion.families.dit import TransformerFamily, tensor_names
from canvaslab.errors import ModelNotAvailableError


class QwenImage(TransformerFamily):
    name = "qwen-image"
    label = "Qwen-Image"
    transformer_class = "QwenImageTransformer2DModel"
    guidance = "true-cfg"
    default_steps = 50
    default_guidance = 4.0
    works_at_own_size = True  # the edit pipelines resize to ~1 Mpx; results are scaled back
    index_classes = {
        "QwenImagePipeline": ("txt2img", "t2i"),
        "QwenImageInpaintPipeline": ("txt2img", "t2i"),
        "QwenImageImg2ImgPipeline": ("txt2img", "t2i"),
        "QwenImageEditPipeline": ("edit", "edit"),
        "QwenImageEditInpaintPipeline": ("edit", "edit"),
    }
    pipelines = {
        ("txt2img", "txt2img"): "QwenImagePipeline",
        ("txt2img", "inpaint"): "QwenImageInpaintPipeline",  # latent blending
        ("edit", "edit"): "QwenImageEditPipeline",
        ("edit", "inpaint"): "QwenImageEditInpaintPipeline",  # a masked edit
    }
    aliases = (
        ModelAlias("qwen-image", "Qwen/Qwen-Image", "qwen-image", "txt2img", 1024,
                   "Qwen-Image, text to image (strong text rendering); inpaints by latent blending"),
        ModelAlias("qwen-image-edit", "Qwen/Qwen-Image-Edit", "qwen-image", "edit", 1024,
                   "Qwen-Image-Edit: edit an image from an instruction (also masked)"),
    )

    @classmethod
    def claims_checkpoint(cls, header: CheckpointHeader) -> bool:
        names = tensor_names(header)
        return "img_in.weight" in names and "txt_norm.weight" in names

    @classmethod
    def guidance_arguments(cls, info: ModelInfo, guidance_scale: float, negative_prompt: str, call: set[str],
                           options: Mapping[str, Any]) -> dict[str, Any]:
        if "true_cfg_scale" not in call:
            return {}
        args: dict[str, Any] = {"true_cfg_scale": guidance_scale}
        if guidance_scale > 1.0:
            args["negative_prompt"] = negative_prompt or " "  # the pipeline runs CFG only with a negative prompt
        return args

    @classmethod
    def load_folder(cls, pipeline: type, location: str, kwargs: dict[str, Any]) -> Any:
        try:
            return pipeline.from_pretrained(location, **kwargs)
        except ImportError as exc:
            if "torchvision" not in str(exc).lower() or "processor" in kwargs:
                raise
            return pipeline.from_pretrained(location, **kwargs, processor=pil_processor(Path(location)))


def pil_processor(folder: Path) -> Any:
    """Qwen-Image-Edit's processor without torchvision: transformers 5's Qwen2VLProcessor always wants a
    video processor (torchvision only); the edit pipelines give it text and images only, so the PIL
    image processor and the tokenizer are all it needs."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

    if not folder.is_dir():
        raise ModelNotAvailableError(f"{folder}: Qwen-Image-Edit's processor needs torchvision, or a local folder")
    try:
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder / "processor")
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"could not load Qwen-Image-Edit's processor from {folder}: {one_line(exc)}") from exc
    processor = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    processor.image_processor, processor.tokenizer, processor.video_processor = image_processor, tokenizer, None
    processor.chat_template = getattr(tokenizer, "chat_template", None)
    processor.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
    processor.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
    processor.image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    processor.video_token_id = tokenizer.convert_tokens_to_ids(processor.video_token)
    return processor
