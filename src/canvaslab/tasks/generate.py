"""The generate task: paint an image from a text prompt (text to image)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from canvaslab.core.image import DEFAULT_MAX_PIXELS
from canvaslab.core.notices import collect_notices
from canvaslab.engines import Engine, EngineOptions
from canvaslab.engines.diffusion.create import GENERATE_MODEL, generate_image
from canvaslab.engines.diffusion.engine import source_config
from canvaslab.engines.unified import engine as unified
from canvaslab.errors import EngineError, InputError
from canvaslab.tasks.common import engine_for, make_recipe, resolve_seed
from canvaslab.tasks.conditioning import Conditioning, conditioning_inputs, load_conditioning
from canvaslab.tasks.requests import GenerateRequest, request_from
from canvaslab.tasks.result import Result

# The model each engine paints with when the request names none.
DEFAULT_MODELS = {"diffusion": GENERATE_MODEL, "unified": unified.DEFAULT_MODEL}


def generate(request: GenerateRequest | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS, **params: Any) -> Result:
    """Paint an image from `prompt` with a text-to-image model (default alias ``sd15``; with
    ``engine="unified"`` Show-o's MaskGIT decoding, default alias ``show-o``).

    Parameters are the fields of `GenerateRequest` (pass `request=` or keywords, not both). The size
    is ``width`` x ``height`` or ``size`` x ``size`` (multiples of the engine's 8 or 16), by default
    the model's native resolution. The recipe records the model and size actually used, so a replay
    does not depend on defaults or the model's configs. `Result.mask` is all True: every pixel was
    generated.
    """
    request = request_from(GenerateRequest, request, params)
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. seed, engine options, model and size
        seed = resolve_seed(request.seed)
        engine, options = engine_for(request)
        request = request.model_copy(update={"model": request.model or DEFAULT_MODELS[request.engine]})
        width, height = _size(request, engine, options)
        if width * height > max_pixels:
            raise InputError(f"{width}x{height} is over the {max_pixels}-pixel limit")
        request = request.model_copy(update={"width": width, "height": height, "size": None})
        # 2. paint (control images fitted to the canvas)
        image = _paint(request, options, width, height, seed, load_conditioning(request, (width, height), max_pixels))
        if image.shape != (height, width, 3):
            raise EngineError(f"engine {request.engine!r} returned {image.shape}, expected {(height, width, 3)}")
        # 3. recipe
        recipe, text = make_recipe("generate", request, seed, (width, height), conditioning_inputs(request))
    return Result(
        image=image, mask=np.ones((height, width), dtype=bool), seed=seed, recipe=recipe, parameters=text,
        notices=list(notes), seconds=time.perf_counter() - started,
    )


def _size(request: GenerateRequest, engine: Engine, options: EngineOptions) -> tuple[int, int]:
    """(width, height): --size for a square, else --width/--height, the model's native side for what is missing."""
    if request.size is not None:
        width, height = request.size, request.size
    elif request.width is not None and request.height is not None:
        width, height = request.width, request.height
    else:
        side = engine.preferred_size(request.generation(), options) or 512
        width, height = request.width or side, request.height or side
    multiple = engine.size_multiple(request.generation(), options)
    for name, value in (("width", width), ("height", height)):
        if value % multiple:
            low, high = value // multiple * multiple, value // multiple * multiple + multiple
            hint = f"{low} or {high}" if low else str(high)
            raise InputError(f"{name} {value} must be a multiple of {multiple} for engine {engine.name!r}: try {hint}")
    return width, height


def _paint(request: GenerateRequest, options: EngineOptions, width: int, height: int, seed: int,
           conditioning: Conditioning | None = None) -> np.ndarray:
    if request.engine == "unified":
        return unified.generate_image(request.generation(), options, width=width, height=height, seed=seed)
    generation = request.generation() if conditioning is None else conditioning.given(request.generation())
    return generate_image(generation, width=width, height=height, seed=seed, config=source_config(options),
                          options=options)
