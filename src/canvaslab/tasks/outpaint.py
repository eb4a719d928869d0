"""The outpaint task: extend the canvas on any sides, once or step by step, and fill the new area."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from canvaslab.core.canvas import (
    Expansion, InitialFill, expand_canvas, plan_expansion, plan_sequence, split_steps, total_expansion,
)
from canvaslab.core.image import DEFAULT_MAX_PIXELS
from canvaslab.core.notices import collect_notices, notice
from canvaslab.engines import Generation, get_engine
from canvaslab.errors import InputError
from canvaslab.tasks.common import (
    ImageInput, describe_input, engine_for, finish, make_recipe, open_image, resolve_seed, run_engine, step_seed,
)
from canvaslab.core.geometry import Box
from canvaslab.tasks.conditioning import conditioning_inputs, load_conditioning
from canvaslab.tasks.requests import OutpaintRequest, request_from
from canvaslab.tasks.result import Result
from canvaslab.tasks.tiles import fill_tiled, tile_size


def outpaint(
    image: ImageInput,
    request: OutpaintRequest | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    **params: Any,
) -> Result:
    """Extend `image` by the request's sides (pixels or a fraction), in `steps` steps, or one
    `sequence` entry per step (any mix of sides, in order).

    Each step regenerates an `overlap` band of the previous image along the extended sides and
    feathers it in, so the seam does not show. Step i is painted from `prompts[i]` (the last one
    for later steps) or `prompt`. Pixels of the input outside those bands are kept bit-identical;
    `Result.mask` marks everything that was generated.
    """
    request = request_from(OutpaintRequest, request, params)
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. inputs and plan
        source = open_image(image, max_pixels)
        steps = plan_steps(request, source.size)
        total = total_expansion(steps)
        new_size = total.new_size(source.size)
        if new_size[0] * new_size[1] > max_pixels:
            raise InputError(f"the outpainted canvas would be {new_size[0]}x{new_size[1]}, over the {max_pixels}-pixel limit")
        seed = resolve_seed(request.seed)
        engine, options = engine_for(request)
        if request.prompts and not engine.uses_prompt:
            notice(f"engine {engine.name!r} does not read prompts: the step prompts are only recorded in the recipe")
        # 2. extend step by step, each step conditioned on the result of the last; control images describe the
        #    final canvas, and each step's canvas is the part of it that exists by then
        conditioning = load_conditioning(request, new_size, max_pixels)
        current = source.rgb
        generated_mask = np.zeros(source.rgb.shape[:2], dtype=bool)
        done = Expansion()
        for index, step in enumerate(steps):
            step_request = request.model_copy(update={"prompt": request.step_prompt(index)})
            canvas, mask = expand_canvas(current, step, fill=request.fill, overlap=request.overlap, seed=step_seed(seed, index))
            if request.fill == InitialFill.patchmatch:
                canvas = _patchmatch_prefill(canvas, mask, step_seed(seed, index))
            done = Expansion(left=done.left + step.left, right=done.right + step.right, top=done.top + step.top,
                             bottom=done.bottom + step.bottom)
            left, top = total.left - done.left, total.top - done.top
            part = None if conditioning is None else conditioning.cropped(
                Box(left, top, left + canvas.shape[1], top + canvas.shape[0]))
            tile = tile_size(step_request, engine, options, (canvas.shape[1], canvas.shape[0]))
            if tile is not None:
                filled = fill_tiled(engine, canvas, mask, step_request, options, step_seed(seed, index), tile,
                                    conditioning=part)
            else:
                filled = run_engine(engine, canvas, mask, step_request, options, step_seed(seed, index), request.size,
                                    conditioning=part)
            current = finish(canvas, filled, mask, request)
            pads = ((step.top, step.bottom), (step.left, step.right))
            generated_mask = np.pad(generated_mask, pads, constant_values=True) | mask
        # 3. alpha: the new area is opaque
        alpha = None
        if source.alpha is not None:
            pads = ((total.top, total.bottom), (total.left, total.right))
            alpha = np.where(generated_mask, np.uint8(255), np.pad(source.alpha, pads, constant_values=255))
        recipe, text = make_recipe("outpaint", request, seed, new_size,
                                   {"image": describe_input(image, source), **conditioning_inputs(request)})
    return Result(
        image=current, mask=generated_mask, seed=seed, recipe=recipe, parameters=text, alpha=alpha,
        notices=list(notes), seconds=time.perf_counter() - started,
    )


def plan_steps(request: OutpaintRequest, size: tuple[int, int]) -> list[Expansion]:
    """What each step adds: the `sequence` entries, or the total split into `steps` nearly equal ones."""
    if request.sequence:
        steps = plan_sequence(size, request.expand or 0.0, tuple(request.sequence))
    else:
        total = plan_expansion(
            size, left=request.left, right=request.right, top=request.top, bottom=request.bottom,
            expand=request.expand, directions=tuple(request.direction),
        )
        steps = split_steps(total, request.steps)
    if len(request.prompts) > len(steps):
        raise InputError(f"got {len(request.prompts)} step prompts for {len(steps)} outpaint steps: give at most one per step")
    return steps


def _patchmatch_prefill(canvas: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """The new area pre-filled by the classical engine: real texture for a generative engine to refine."""
    engine = get_engine("patchmatch")
    filled = engine.inpaint(canvas, mask, seed=seed, options=engine.parse_options({}), generation=Generation())
    return np.where(mask[..., None], filled, canvas)
