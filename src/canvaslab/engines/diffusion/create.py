"""Text to image and instruction editing through diffusers pipelines: the pixels of `generate` and `edit`.

These tasks have no mask (and `generate` no input image), so they do not go through the `Engine`
interface; the tasks call these functions with the request's `Generation` plus what only they need
(size, image guidance). The model, scheduler, LoRA and memory handling are the diffusion engine's:
`load_pipeline` picks StableDiffusion(XL)Pipeline, the InstructPix2Pix pipelines or, for models
conditioned on N > 1 frames, canvaslab's `StableDiffusionFrameEditPipeline` (frames.py), and refuses
a model made for another task in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from canvaslab.engines.base import Generation
from canvaslab.engines.base import EngineOptions
from canvaslab.engines.diffusion.control import without_silent_units
from canvaslab.engines.diffusion.engine import conditioning_arguments, model_info, prepared_pipeline, run_pipeline
from canvaslab.errors import InputError

GENERATE_MODEL = "sd15"
EDIT_MODEL = "instruct-pix2pix"


def generate_image(
    generation: Generation, *, width: int, height: int, seed: int, config: str | None = None,
    options: EngineOptions | None = None,
) -> np.ndarray:
    """A `height` x `width` x 3 uint8 image painted from `generation.prompt`."""
    generation = without_silent_units(generation)
    pipe = prepared_pipeline(generation, "txt2img", config=config, default_model=GENERATE_MODEL,
                             quantize=getattr(options, "quantize", None))
    info = model_info(generation, config, GENERATE_MODEL)
    arguments = {"prompt": generation.prompt, "width": width, "height": height,
                 **conditioning_arguments(pipe, info, "txt2img", generation, None, None, seed)}
    return run_pipeline(pipe, info, generation, "txt2img", arguments, options=options, seed=seed, size=(height, width))


def edit_image(
    image: np.ndarray, generation: Generation, *, image_guidance_scale: float, seed: int, config: str | None = None,
    options: EngineOptions | None = None,
) -> np.ndarray:
    """`image` (HxWx3 uint8, sides multiples of the model's size multiple) changed as `generation.prompt`
    instructs; same size."""
    from PIL import Image

    pipe = prepared_pipeline(generation, "edit", config=config, default_model=EDIT_MODEL,
                             quantize=getattr(options, "quantize", None))
    _check_frame_count(pipe, generation, 1)
    info = model_info(generation, config, EDIT_MODEL)
    return _run_edit(pipe, info, generation, Image.fromarray(image), image.shape[:2], image_guidance_scale, seed, options)


def edit_frames(
    frames: Sequence[np.ndarray], generation: Generation, *, image_guidance_scale: float, seed: int,
    config: str | None = None,
) -> np.ndarray:
    """The frame `frames` lead to (N images HxWx3 uint8 of one size, sides multiples of 8, in order), as
    `generation.prompt` instructs; same size.

    The model's UNet must take 4 + 4N input channels. With N = 1 (an InstructPix2Pix model) this runs
    the stock pipeline on the one frame and gives exactly what `edit_image` gives.
    """
    from PIL import Image

    if not frames or len({frame.shape for frame in frames}) != 1:
        raise InputError(f"edit_frames needs one or more frames of one size, got shapes {[f.shape for f in frames]}")
    pipe = prepared_pipeline(generation, "edit", config=config, default_model=EDIT_MODEL)
    _check_frame_count(pipe, generation, len(frames))
    images = [Image.fromarray(frame) for frame in frames]
    info = model_info(generation, config, EDIT_MODEL)
    return _run_edit(pipe, info, generation, images, frames[0].shape[:2], image_guidance_scale, seed, None)


def _run_edit(pipe: Any, info: Any, generation: Generation, image: Any, shape: tuple[int, ...],
              image_guidance_scale: float, seed: int, options: EngineOptions | None) -> np.ndarray:
    height, width = shape[:2]
    # height/width where the pipeline takes them: SDXL and Kontext would otherwise resize to ~1 Mpx
    arguments = {"prompt": generation.prompt, "image": image, "height": height, "width": width,
                 "image_guidance_scale": image_guidance_scale}
    return run_pipeline(pipe, info, generation, "edit", arguments, options=options, seed=seed, size=(height, width))


def frame_count(pipe: Any) -> int:
    """N, the images an edit pipeline's UNet is conditioned on (4 + 4N input channels; 1 = InstructPix2Pix);
    1 for the transformer families' editing pipelines (one input image)."""
    if getattr(pipe, "unet", None) is None:
        return 1
    latent = pipe.vae.config.latent_channels
    return (pipe.unet.config.in_channels - latent) // latent


def _check_frame_count(pipe: Any, generation: Generation, given: int) -> None:
    expected = frame_count(pipe)
    if given != expected and getattr(pipe, "unet", None) is None:
        raise InputError(f"model {generation.model or EDIT_MODEL} edits one image at a time, got {given} frames; "
                         "multi-frame editing needs a Stable Diffusion model of 4+4N UNet channels")
    if given != expected:
        unet = pipe.unet.config.in_channels
        raise InputError(
            f"model {generation.model or EDIT_MODEL} takes {expected} input frame{'s' if expected != 1 else ''} "
            f"({unet}-channel UNet), got {given}; pass exactly {expected} (edit: --frames DIR)"
        )


def model_frame_count(generation: Generation, *, config: str | None = None) -> tuple[int, int]:
    """(N, UNet input channels) of the request's edit model, read from its configs without loading weights,
    so that a wrong number of frames fails before anything heavy happens."""
    from canvaslab.engines.diffusion.models import resolve_and_detect

    _, info = resolve_and_detect(
        generation.model or EDIT_MODEL, config=config, cache_dir=generation.cache_dir,
        local_files_only=generation.local_files_only,
    )
    return info.condition_frames, info.in_channels
