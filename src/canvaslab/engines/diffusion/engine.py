"""The diffusion engine: Stable Diffusion family inpainting through diffusers pipelines.

Any SD 1.x/2.x/SDXL checkpoint works: an inpainting UNet (9 input channels) runs the inpainting
pipeline as trained; a plain text-to-image UNet (4 channels) runs the same pipeline class, which then
blends the known region's latents back at every step (what A1111 does for non-inpainting models).
Tasks hand over an image already aligned to a multiple of 8 and composite the result, so pixels
outside the mask stay bit-identical even though the VAE round trip changes them.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from canvaslab.engines.base import Engine, EngineOptions, Generation
from canvaslab.engines.diffusion.schedulers import make_scheduler, scheduler_spec

DEFAULT_MODEL = "sd15-inpaint"


class DiffusionOptions(EngineOptions):
    config: str | None = Field(
        None, description="diffusers folder or hub id holding the configs a single .safetensors/.ckpt file needs"
    )


class DiffusionEngine(Engine):
    name: ClassVar[str] = "diffusion"
    description: ClassVar[str] = (
        "Stable Diffusion 1.x/2.x/SDXL via diffusers (--model): inpainting checkpoints or any plain one"
    )
    Options: ClassVar[type[EngineOptions]] = DiffusionOptions
    pad_multiple: ClassVar[int] = 8  # the VAE downsamples by 8
    needs_context: ClassVar[bool] = False  # it can paint a whole canvas from the prompt
    uses_prompt: ClassVar[bool] = True

    def describe_sampling(self, generation: Generation) -> dict[str, object]:
        sampler = scheduler_spec(generation.scheduler).a1111_name if generation.scheduler else "model default"
        return {
            "Steps": generation.steps,
            "Sampler": sampler,
            "CFG scale": generation.guidance_scale,
            "Denoising strength": generation.strength,
            "Model": generation.model or DEFAULT_MODEL,
        }

    def inpaint(
        self, image: np.ndarray, mask: np.ndarray, *, seed: int, options: EngineOptions, generation: Generation
    ) -> np.ndarray:
        import torch
        from PIL import Image

        pipe = self._pipeline(generation, options)
        _use_scheduler(pipe, generation.scheduler)
        height, width = mask.shape
        result = pipe(
            prompt=generation.prompt,
            negative_prompt=generation.negative_prompt or None,
            image=Image.fromarray(image),
            mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
            height=height,
            width=width,
            strength=generation.strength,
            num_inference_steps=generation.steps,
            guidance_scale=generation.guidance_scale,
            # A CPU generator gives the same noise whatever the device, so seeds reproduce across machines.
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        )
        return np.clip(np.rint(result.images[0] * 255.0), 0, 255).astype(np.uint8)

    def _pipeline(self, generation: Generation, options: EngineOptions) -> Any:
        _quiet_libraries()
        from canvaslab.engines.diffusion.models import load_pipeline

        pipe = load_pipeline(
            generation.model or DEFAULT_MODEL,
            task="inpaint",
            dtype=generation.dtype,
            device=generation.device,
            offload=generation.offload,
            attention_slicing=generation.attention_slicing,
            vae_tiling=generation.vae_tiling,
            config=getattr(options, "config", None),
            cache_dir=generation.cache_dir,
            local_files_only=generation.local_files_only,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _use_scheduler(pipe: Any, name: str | None) -> None:
    """Switch the cached pipeline to scheduler `name`, or back to the model's own when None."""
    own = getattr(pipe, "_canvaslab_own_scheduler", None)
    if own is None:
        own = pipe.scheduler
        pipe._canvaslab_own_scheduler = own
    pipe.scheduler = own if name is None else make_scheduler(name, own.config)


def _quiet_libraries() -> None:
    """diffusers/transformers print harmless warnings and loading bars on every call; keep stderr readable.

    The environment variables must be set before the libraries are first imported (they read them
    once when they configure their loggers); users can still override them.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
