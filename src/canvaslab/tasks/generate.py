"""The generate task: paint an image from a text prompt (text to image)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from canvaslab.core.image import DEFAULT_MAX_PIXELS
from canvaslab.core.notices import collect_notices
from canvaslab.engines.diffusion.create import GENERATE_MODEL, generate_image
from canvaslab.engines.diffusion.engine import native_resolution
from canvaslab.errors import EngineError, InputError
from canvaslab.tasks.common import engine_for, make_recipe, resolve_seed
from canvaslab.tasks.requests import GenerateRequest, request_from
from canvaslab.tasks.result import Result


def generate(request: GenerateRequest | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS, **params: Any) -> Result:
    """Paint an image from `prompt` with a text-to-image model (default alias ``sd15``).

    Parameters are the fields of `GenerateRequest` (pass `request=` or keywords, not both). The size
    is ``width`` x ``height`` or ``size`` x ``size`` (multiples of 8), by default the model's native
    resolution. The recipe records the size actually used, so a replay does not depend on the model's
    configs. `Result.mask` is all True: every pixel was generated.
    """
    request = request_from(GenerateRequest, request, params)
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. seed, engine options and size
        seed = resolve_seed(request.seed)
        _, options = engine_for(request)
        config = getattr(options, "config", None)
        width, height = _size(request, config)
        if width * height > max_pixels:
            raise InputError(f"{width}x{height} is over the {max_pixels}-pixel limit")
        request = request.model_copy(update={"width": width, "height": height, "size": None})
        # 2. paint
        image = generate_image(request.generation(), width=width, height=height, seed=seed, config=config)
        if image.shape != (height, width, 3):
            raise EngineError(f"the pipeline returned {image.shape}, expected {(height, width, 3)}")
        # 3. recipe
        recipe, text = make_recipe("generate", request, seed, (width, height), {})
    return Result(
        image=image, mask=np.ones((height, width), dtype=bool), seed=seed, recipe=recipe, parameters=text,
        notices=list(notes), seconds=time.perf_counter() - started,
    )


def _size(request: GenerateRequest, config: str | None) -> tuple[int, int]:
    """(width, height): --size for a square, else --width/--height, the model's native side for what is missing."""
    if request.size is not None:
        return request.size, request.size
    if request.width is not None and request.height is not None:
        return request.width, request.height
    side = native_resolution(request.generation(), config=config, default_model=GENERATE_MODEL)
    return request.width or side, request.height or side
