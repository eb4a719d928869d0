"""Text to image and instruction editing through diffusers pipelines: the pixels of `generate` and `edit`.

These tasks have no mask (and `generate` no input image), so they do not go through the `Engine`
interface; the tasks call these functions with the request's `Generation` plus what only they need
(size, image guidance). The model, scheduler, LoRA and memory handling are the diffusion engine's:
`load_pipeline` picks StableDiffusion(XL)Pipeline or the InstructPix2Pix pipelines and refuses a model
made for another task in one line.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from canvaslab.engines.base import Generation
from canvaslab.engines.diffusion.models import Task, detect, resolve_source

GENERATE_MODEL = "sd15"
EDIT_MODEL = "instruct-pix2pix"


def native_resolution(generation: Generation, *, config: str | None = None) -> int:
    """The side (px) the model was trained at, read from its configs without loading weights."""
    source = resolve_source(
        generation.model or GENERATE_MODEL, config=config, cache_dir=generation.cache_dir,
        local_files_only=generation.local_files_only,
    )
    return detect(source).native_resolution


def generate_image(
    generation: Generation, *, width: int, height: int, seed: int, config: str | None = None
) -> np.ndarray:
    """A `height` x `width` x 3 uint8 image painted from `generation.prompt`."""
    pipe = _pipeline(generation, "txt2img", config, default_model=GENERATE_MODEL)
    result = pipe(
        prompt=generation.prompt,
        negative_prompt=generation.negative_prompt or None,
        width=width,
        height=height,
        num_inference_steps=generation.steps,
        guidance_scale=generation.guidance_scale,
        generator=_generator(seed),
        output_type="np",
    )
    return _to_uint8(result.images[0])


def edit_image(
    image: np.ndarray, generation: Generation, *, image_guidance_scale: float, seed: int, config: str | None = None
) -> np.ndarray:
    """`image` (HxWx3 uint8, sides multiples of 8) changed as `generation.prompt` instructs; same size."""
    from PIL import Image

    pipe = _pipeline(generation, "edit", config, default_model=EDIT_MODEL)
    height, width = image.shape[:2]
    # The SDXL pipeline would resize the image to its default 1024 px unless told the size; SD 1.x takes none.
    size = {"height": height, "width": width} if "height" in inspect.signature(pipe.__call__).parameters else {}
    result = pipe(
        prompt=generation.prompt,
        negative_prompt=generation.negative_prompt or None,
        image=Image.fromarray(image),
        **size,
        num_inference_steps=generation.steps,
        guidance_scale=generation.guidance_scale,
        image_guidance_scale=image_guidance_scale,
        generator=_generator(seed),
        output_type="np",
    )
    return _to_uint8(result.images[0])


def _pipeline(generation: Generation, task: Task, config: str | None, *, default_model: str) -> Any:
    from canvaslab.engines.diffusion.engine import _quiet_libraries, _use_scheduler
    from canvaslab.engines.diffusion.lora import apply_loras
    from canvaslab.engines.diffusion.models import load_pipeline

    _quiet_libraries()
    pipe = load_pipeline(
        generation.model or default_model,
        task=task,
        dtype=generation.dtype,  # type: ignore[arg-type]
        device=generation.device,  # type: ignore[arg-type]
        offload=generation.offload,  # type: ignore[arg-type]
        attention_slicing=generation.attention_slicing,
        vae_tiling=generation.vae_tiling,
        config=config,
        cache_dir=generation.cache_dir,
        local_files_only=generation.local_files_only,
    )
    pipe.set_progress_bar_config(disable=True)
    _use_scheduler(pipe, generation.scheduler)
    # Always called, also without LoRAs: the cached modules are shared with the other tasks' pipelines.
    apply_loras(pipe, generation.loras, cache_dir=generation.cache_dir)
    return pipe


def _generator(seed: int) -> Any:
    import torch

    # A CPU generator gives the same noise whatever the device, so seeds reproduce across machines.
    return torch.Generator("cpu").manual_seed(seed)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
