"""The diffusion engine: Stable Diffusion family inpainting through diffusers pipelines.

Any SD 1.x/2.x/SDXL checkpoint works: an inpainting UNet (9 input channels) runs the inpainting
pipeline as trained; a plain text-to-image UNet (4 channels) runs the same pipeline class, which then
blends the known region's latents back at every step (what A1111 does for non-inpainting models).
Tasks hand over an image already aligned to a multiple of 8 and composite the result, so pixels
outside the mask stay bit-identical even though the VAE round trip changes them.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from canvaslab.core.notices import notice
from canvaslab.core.progress import listening, report_progress
from canvaslab.engines.base import Engine, EngineOptions, Generation
from canvaslab.engines.diffusion.schedulers import make_scheduler, scheduler_spec
from canvaslab.engines.diffusion.tiling import with_tiling

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

    def preferred_size(self, generation: Generation, options: EngineOptions) -> int | None:
        return native_resolution(generation, config=getattr(options, "config", None), default_model=DEFAULT_MODEL)

    def describe_sampling(self, generation: Generation) -> dict[str, object]:
        sampler = scheduler_spec(generation.scheduler).a1111_name if generation.scheduler else "model default"
        return {
            "Steps": generation.steps,
            "Sampler": sampler,
            "CFG scale": generation.guidance_scale,
            "Denoising strength": generation.strength,
            "Model": generation.model or DEFAULT_MODEL,
            **({"Masked content": generation.masked_content} if generation.masked_content != "original" else {}),
            **({"Inpainting conditioning mask strength": generation.mask_weight} if generation.mask_weight != 1 else {}),
        }

    def inpaint(
        self, image: np.ndarray, mask: np.ndarray, *, seed: int, options: EngineOptions, generation: Generation
    ) -> np.ndarray:
        from PIL import Image

        pipe = prepared_pipeline(
            generation, "inpaint", config=getattr(options, "config", None), default_model=DEFAULT_MODEL
        )
        height, width = mask.shape
        start = masked_start(pipe, image, mask, generation.masked_content, seed) if generation.strength < 1 else image
        if generation.masked_content != "original" and generation.strength >= 1:
            notice("--masked-content only matters with --strength < 1: at strength 1 the masked area starts from noise")
        result = with_tiling(pipe, generation.tiling, seed=seed)(
            prompt=generation.prompt,
            negative_prompt=generation.negative_prompt or None,
            image=Image.fromarray(start),
            mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
            **_conditioning(pipe, start, mask, generation.mask_weight),
            height=height,
            width=width,
            strength=generation.strength,
            num_inference_steps=generation.steps,
            guidance_scale=generation.guidance_scale,
            generator=cpu_generator(seed),
            output_type="np",
            **step_callback(pipe, generation.steps),
        )
        return to_uint8(result.images[0])


def step_callback(pipe: Any, steps: int) -> dict[str, Any]:
    """`callback_on_step_end` reporting each step to `core.progress` (empty when nobody listens).

    The total is the pipeline's own count of timesteps (fewer than `steps` below strength 1);
    `report_progress` raises `Cancelled` from inside the loop when the job was cancelled.
    """
    if not listening():
        return {}

    def on_step_end(pipeline: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        report_progress(index + 1, getattr(pipeline, "num_timesteps", None) or steps)
        return kwargs

    return {"callback_on_step_end": on_step_end}


def prepared_pipeline(generation: Generation, task: str, *, config: str | None, default_model: str) -> Any:
    """The cached pipeline for `task`, set to the request's scheduler and LoRAs (inpaint, edit, generate)."""
    _quiet_libraries()
    from canvaslab.engines.diffusion.lora import apply_loras, resolve_lora, widened_channels
    from canvaslab.engines.diffusion.models import load_pipeline

    # A LoRA trained on a widened UNet input (e.g. a 4-channel base made an editing model) decides the
    # pipeline class: the base alone would be refused for the task.
    widened = [c for spec, weight in generation.loras if weight != 0
               for c in [widened_channels(resolve_lora(spec, cache_dir=generation.cache_dir))] if c]

    pipe = load_pipeline(
        generation.model or default_model,
        task=task,  # type: ignore[arg-type]
        dtype=generation.dtype,  # type: ignore[arg-type]
        device=generation.device,  # type: ignore[arg-type]
        offload=generation.offload,  # type: ignore[arg-type]
        attention_slicing=generation.attention_slicing,
        vae_tiling=generation.vae_tiling,
        config=config,
        cache_dir=generation.cache_dir,
        local_files_only=generation.local_files_only,
        in_channels=max(widened) if widened else None,
    )
    pipe.set_progress_bar_config(disable=True)
    _use_scheduler(pipe, generation.scheduler)
    # Always called, also without LoRAs: the cached modules are shared by every task's pipeline.
    apply_loras(pipe, generation.loras, cache_dir=generation.cache_dir)
    return pipe


def native_resolution(generation: Generation, *, config: str | None, default_model: str) -> int:
    """The side (px) the model was trained at, read from its configs without loading weights."""
    from canvaslab.engines.diffusion.models import resolve_and_detect

    _, info = resolve_and_detect(
        generation.model or default_model, config=config, cache_dir=generation.cache_dir,
        local_files_only=generation.local_files_only,
    )
    return info.native_resolution


def cpu_generator(seed: int) -> Any:
    import torch

    # A CPU generator gives the same noise whatever the device, so seeds reproduce across machines.
    return torch.Generator("cpu").manual_seed(seed)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A pipeline's float image in [0, 1] as uint8."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def masked_start(pipe: Any, image: np.ndarray, mask: np.ndarray, content: str, seed: int) -> np.ndarray:
    """The image the pipeline starts from, with the masked area prepared as A1111's "masked content" does.

    `fill` puts blurred surroundings there; `latent-noise` / `latent-nothing` replace the masked latents
    with noise / zeros and decode them, so the pipeline's own encoder sees (almost exactly) those latents.
    """
    if content == "original":
        return image
    if content == "fill":
        import cv2

        filled = cv2.inpaint(image, mask.astype(np.uint8) * 255, 5, cv2.INPAINT_TELEA)
        blurred = cv2.GaussianBlur(filled, (0, 0), sigmaX=max(4.0, max(mask.shape) / 32))
        return np.where(mask[..., None], blurred, image)
    return _latent_start(pipe, image, mask, zero=content == "latent-nothing", seed=seed)


def _latent_start(pipe: Any, image: np.ndarray, mask: np.ndarray, *, zero: bool, seed: int) -> np.ndarray:
    import torch

    vae = pipe.vae
    scale = vae.config.scaling_factor
    with torch.no_grad():
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(vae.device, vae.dtype) / 127.5 - 1.0
        latents = vae.encode(pixels).latent_dist.mean * scale
        small = torch.from_numpy(mask.astype(np.float32))[None, None]
        small = torch.nn.functional.interpolate(small, size=latents.shape[-2:], mode="nearest").to(latents.device) > 0.5
        generator = torch.Generator("cpu").manual_seed((seed + 1) % 2**32)  # not the sampler's stream
        fresh = torch.zeros_like(latents) if zero else torch.randn(latents.shape, generator=generator).to(latents)
        latents = torch.where(small, fresh, latents)
        decoded = vae.decode(latents / scale).sample
    decoded = ((decoded[0].permute(1, 2, 0).float().cpu().numpy() + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8)
    return np.where(mask[..., None], decoded, image)


def _conditioning(pipe: Any, image: np.ndarray, mask: np.ndarray, weight: float) -> dict[str, Any]:
    """A1111's inpainting_mask_weight: blend the conditioning image between masked (1) and unmasked (0).

    diffusers encodes `masked_image_latents` itself when it is given in pixel space (3 channels), so
    the blended image goes there; weight 1 passes nothing, keeping the pipeline's own path exactly.
    """
    if weight >= 1.0:
        return {}
    if pipe.unet.config.in_channels != 9:
        notice("--mask-weight only affects inpainting models (9-channel UNet); this model ignores it")
        return {}
    import torch

    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    keep = 1.0 - weight * torch.from_numpy(mask.astype(np.float32))[None, None]
    return {"masked_image_latents": pixels * keep}


def _use_scheduler(pipe: Any, name: str | None) -> None:
    """Switch the cached pipeline to scheduler `name`, or back to the model's own when None."""
    own = getattr(pipe, "_canvaslab_own_scheduler", None)
    if own is None:
        own = pipe.scheduler
        pipe._canvaslab_own_scheduler = own
    pipe.scheduler = own if name is None else make_scheduler(name, own.config)


@functools.lru_cache(maxsize=None)
def _quiet_libraries() -> None:
    """diffusers/transformers print harmless warnings and loading bars on every call; keep stderr readable.

    The environment variables must be set before the libraries are first imported (they read them
    once when they configure their loggers); users can still override them. Done once per process.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
