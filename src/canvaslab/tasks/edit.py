"""The edit task: change an image from an instruction ("make it winter"), InstructPix2Pix style."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from canvaslab.core.geometry import align, restore
from canvaslab.core.image import DEFAULT_MAX_PIXELS
from canvaslab.core.notices import collect_notices
from canvaslab.engines.diffusion.create import edit_image
from canvaslab.errors import EngineError
from canvaslab.tasks.common import ImageInput, describe_input, engine_for, make_recipe, open_image, resolve_seed
from canvaslab.tasks.requests import EditRequest, request_from
from canvaslab.tasks.result import Result


def edit(
    image: ImageInput,
    request: EditRequest | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    **params: Any,
) -> Result:
    """Change `image` as `instruction` says, with an image-editing model (default ``instruct-pix2pix``).

    Parameters are the fields of `EditRequest` (``instruction`` is recorded as the prompt; pass
    `request=` or keywords, not both). The model works at a multiple of 8 (``align``: resize by
    default, or pad); the result has the input's exact size and keeps its alpha channel.
    `Result.mask` is all True: every pixel may have changed.
    """
    request = request_from(EditRequest, request, params)
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. inputs
        source = open_image(image, max_pixels)
        seed = resolve_seed(request.seed)
        engine, options = engine_for(request)
        # 2. edit at an aligned size, then back to the exact input size
        everything = np.ones(source.rgb.shape[:2], dtype=bool)
        aligned, _, info = align(source.rgb, everything, request.multiple or engine.pad_multiple, request.align)
        out = edit_image(
            aligned, request.generation(), image_guidance_scale=request.image_guidance_scale, seed=seed,
            config=getattr(options, "config", None),
        )
        if out.shape != aligned.shape:
            raise EngineError(f"the pipeline returned {out.shape}, expected {aligned.shape}")
        final = restore(out, info)
        # 3. recipe
        recipe, text = make_recipe("edit", request, seed, source.size, {"image": describe_input(image, source)})
    return Result(
        image=final, mask=everything, seed=seed, recipe=recipe, parameters=text, alpha=source.alpha,
        notices=list(notes), seconds=time.perf_counter() - started,
    )
