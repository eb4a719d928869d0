"""The inpaint task: fill the masked pixels of an image with an engine."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from canvaslab.core.geometry import Box, crop, crop_box_around, paste
from canvaslab.core.image import (
    DEFAULT_MAX_PIXELS, LoadedImage, levels_from_alpha, load_mask, load_mask_levels, mask_from_alpha,
)
from canvaslab.core.mask import bounding_box, grow, grow_levels
from canvaslab.core.notices import collect_notices, notice
from canvaslab.engines import Engine, EngineOptions
from canvaslab.errors import InputError
from canvaslab.tasks.common import (
    ImageInput, describe_input, engine_for, finish, make_recipe, open_image, polarity_hint, resolve_seed, run_engine,
)
from canvaslab.tasks.conditioning import Conditioning, conditioning_inputs, load_conditioning
from canvaslab.tasks.requests import InpaintArea, InpaintRequest, MaskMode, request_from
from canvaslab.tasks.result import Result
from canvaslab.tasks.tiles import fill_tiled, tile_size

# Engines that copy from known pixels (`needs_context`) get at least this much of them around an
# only-masked crop: half the hole's longer side, so texture as wide as the hole is there to copy.
MIN_CONTEXT_PX = 16
CONTEXT_FRACTION = 0.5


def inpaint(
    image: ImageInput,
    mask: ImageInput | None = None,
    request: InpaintRequest | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    **params: Any,
) -> Result:
    """Fill the masked pixels of `image`.

    `mask` is a file, bytes, PIL image or array (bool arrays are used as is: True = fill). Without
    a mask, ``mask_mode="alpha"`` fills the image's own transparent pixels. Parameters are the
    fields of `InpaintRequest` (pass `request=` or keywords, not both). Pixels outside the (grown)
    mask are returned bit-identical. With ``soft=True`` the mask's grey levels (or an HxW float
    array in [0, 1]) say how much each pixel may change; level-0 pixels are the ones returned
    bit-identical.
    """
    request = request_from(InpaintRequest, request, params)
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. inputs (soft: the levels, and the hole is where they are above 0)
        source = open_image(image, max_pixels)
        levels = load_levels(mask, source, request, max_pixels) if request.soft else None
        hole = levels > 0 if levels is not None else load_hole(mask, source, request, max_pixels)
        if isinstance(mask, (str, os.PathLike)) and not request.soft:
            polarity_hint(hole, request.mask_mode.value)
        seed = resolve_seed(request.seed)
        # 2. the work: nothing to do for an empty mask
        if not hole.any():
            notice("the mask is empty: returning the input unchanged")
            final = source.rgb.copy()
        else:
            if levels is not None:
                levels = grow_levels(levels, request.grow)
                hole = levels > 0
            else:
                hole = grow(hole, request.grow)
            final = _fill(source.rgb, hole, request, seed, levels, load_conditioning(request, source.size, max_pixels))
        # 3. alpha: filled pixels become opaque, the rest keeps the input's transparency
        alpha = None if source.alpha is None else np.where(hole, np.uint8(255), source.alpha)
        inputs = {"image": describe_input(image, source), "mask": describe_input(mask) if mask is not None else None,
                  **conditioning_inputs(request)}
        if inputs["mask"] is not None and (made := mask_made_by(mask)) is not None:
            inputs["mask"]["made"] = made  # how `canvaslab mask` made it: replay can make it again
        recipe, text = make_recipe("inpaint", request, seed, source.size, inputs)
    return Result(
        image=final, mask=hole, seed=seed, recipe=recipe, parameters=text, alpha=alpha,
        notices=list(notes), seconds=time.perf_counter() - started,
    )


def load_hole(mask: ImageInput | None, source: LoadedImage, request: InpaintRequest, max_pixels: int) -> np.ndarray:
    """The pixels to fill (before `grow`): the mask as the request reads it, or the image's transparency
    (soft inpainting: every pixel above level 0)."""
    if request.soft:
        return load_levels(mask, source, request, max_pixels) > 0
    if isinstance(mask, np.ndarray) and mask.dtype == bool:
        if mask.shape != source.rgb.shape[:2]:
            raise InputError(f"mask array is {mask.shape[1]}x{mask.shape[0]} but the image is {source.size[0]}x{source.size[1]}")
        return mask.copy()
    if mask is None:
        return mask_from_alpha(own_alpha(source, request), request.threshold)
    return load_mask(mask, mode=request.mask_mode.value, size=source.size, threshold=request.threshold, max_pixels=max_pixels)


def load_levels(mask: ImageInput | None, source: LoadedImage, request: InpaintRequest, max_pixels: int) -> np.ndarray:
    """Soft inpainting: how much each pixel may change (HxW float32 in [0, 1]), from the mask's grey
    levels as the request reads them, or the image's transparency. Arrays: bool as 0/1, float as is."""
    if isinstance(mask, np.ndarray) and (mask.dtype == bool or np.issubdtype(mask.dtype, np.floating)):
        if mask.shape != source.rgb.shape[:2]:
            raise InputError(f"mask array is {mask.shape[1]}x{mask.shape[0]} but the image is {source.size[0]}x{source.size[1]}")
        if mask.dtype != bool and not (np.isfinite(mask).all() and mask.min() >= 0 and mask.max() <= 1):
            raise InputError("a float mask array gives levels from 0 (keep) to 1 (change): its values must be in [0, 1]")
        return mask.astype(np.float32)
    if mask is None:
        return levels_from_alpha(own_alpha(source, request))
    return load_mask_levels(mask, mode=request.mask_mode.value, size=source.size, max_pixels=max_pixels)


def own_alpha(source: LoadedImage, request: InpaintRequest) -> np.ndarray:
    """The image's own transparency, for an inpaint without a mask file (--mask-mode alpha)."""
    if request.mask_mode != MaskMode.alpha:
        raise InputError("inpaint needs a mask: pass --mask FILE, or --mask-mode alpha for an image with transparent pixels")
    if source.alpha is None:
        raise InputError(f"--mask-mode alpha without --mask needs transparent pixels, but {source.source} has no alpha channel")
    return source.alpha


def _fill(rgb: np.ndarray, hole: np.ndarray, request: InpaintRequest, seed: int, levels: np.ndarray | None,
          conditioning: Conditioning | None = None) -> np.ndarray:
    engine, options = engine_for(request)
    if request.area == InpaintArea.masked:
        # A1111's "only masked": the crop is scaled to the working size, so small holes get full detail.
        box, long_side = masked_crop(hole, request, engine, options)
        patch = run_engine(engine, crop(rgb, box), crop(hole, box), request, options, seed, long_side,
                           levels=None if levels is None else crop(levels, box),
                           conditioning=None if conditioning is None else conditioning.cropped(box))
        generated = paste(rgb, patch, box)
    elif (tile := tile_size(request, engine, options, (rgb.shape[1], rgb.shape[0]))) is not None:
        generated = fill_tiled(engine, rgb, hole, request, options, seed, tile, levels=levels, conditioning=conditioning)
    else:
        generated = run_engine(engine, rgb, hole, request, options, seed, request.size, levels=levels,
                               conditioning=conditioning)
    return finish(rgb, generated, hole, request, levels)


def masked_crop(hole: np.ndarray, request: InpaintRequest, engine: Engine, options: EngineOptions) -> tuple[Box, int | None]:
    """Where an only-masked fill works: the box around the (non-empty) hole and the long side it is scaled to.

    An engine that fills from known pixels always gets some around the hole, whatever `padding`
    says: A1111 clients send padding 0 by default, and a crop that is all hole leaves such an engine
    nothing to copy from. The box then keeps `context_padding(hole)` pixels on every side the
    image allows, and a notice says so.
    """
    padding = request.padding
    if engine.needs_context:
        needed = context_padding(hole)
        if padding < needed:
            notice(f"padding {padding} leaves engine {engine.name!r} too little to fill from: the crop keeps {needed} px "
                   "around the mask")
            padding = needed
    box = crop_box_around(hole, padding, multiple=request.multiple or engine.size_multiple(request.generation(), options))
    if box is None:
        raise InputError("the mask is empty: there is no area to crop around")
    return box, request.size or engine.preferred_size(request.generation(), options)


def context_padding(hole: np.ndarray) -> int:
    """The least context a context-needing engine gets around `hole` in an only-masked crop."""
    left, top, right, bottom = bounding_box(hole) or (0, 0, 0, 0)
    return max(MIN_CONTEXT_PX, math.ceil(CONTEXT_FRACTION * max(right - left, bottom - top)))


def mask_made_by(mask: ImageInput) -> dict[str, Any] | None:
    """The recipe a mask file carries when `canvaslab mask` made it (points, words or rule, model, settings)."""
    from canvaslab.tasks.mask import recipe_of_mask  # here: tasks.mask builds on the batch runner, which runs inpaint

    return recipe_of_mask(mask)
