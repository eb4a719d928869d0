"""Text to image and instruction editing through diffusers pipelines: the pixels of `generate` and `edit`.

These tasks have no mask (and `generate` no input image), so they do not go through the `Engine`
interface; the tasks call these functions with the request's `Generation` plus what only they need
(size, image guidance). The model, scheduler, LoRA and memory handling are the diffusion engine's:
`load_pipeline` picks StableDiffusion(XL)Pipeline or the InstructPix2Pix pipelines and refuses a model
made for another task in one line.
"""

from __future__ import annotations

import inspect
import numpy as np

from canvaslab.engines.base import Generation
from canvaslab.engines.diffusion.engine import cpu_generator, prepared_pipeline, to_uint8

GENERATE_MODEL = "sd15"
EDIT_MODEL = "instruct-pix2pix"


def generate_image(
    generation: Generation, *, width: int, height: int, seed: int, config: str | None = None
) -> np.ndarray:
    """A `height` x `width` x 3 uint8 image painted from `generation.prompt`."""
    pipe = prepared_pipeline(generation, "txt2img", config=config, default_model=GENERATE_MODEL)
    result = pipe(
        prompt=generation.prompt,
        negative_prompt=generation.negative_prompt or None,
        width=width,
        height=height,
        num_inference_steps=generation.steps,
        guidance_scale=generation.guidance_scale,
        generator=cpu_generator(seed),
        output_type="np",
    )
    return to_uint8(result.images[0])


def edit_image(
    image: np.ndarray, generation: Generation, *, image_guidance_scale: float, seed: int, config: str | None = None
) -> np.ndarray:
    """`image` (HxWx3 uint8, sides multiples of 8) changed as `generation.prompt` instructs; same size."""
    from PIL import Image

    pipe = prepared_pipeline(generation, "edit", config=config, default_model=EDIT_MODEL)
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
        generator=cpu_generator(seed),
        output_type="np",
    )
    return to_uint8(result.images[0])
