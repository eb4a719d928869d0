"""The texture task: make an existing image tile without a seam (`canvaslab texture seamless`).

Copies of an image laid side by side show a seam where its right edge meets its left one (and, stacked,
where the bottom meets the top). To remove it:

1. Roll the image by half its size along the axes: the seams move to the middle, as a cross for both
   axes, and the new edges are lines of the image's own interior, which continue across them.
2. Inpaint a band over the seams with the request's engine. Engines that can wrap around (patchmatch,
   diffusion: `ENGINE_FIELDS` lists them as reading `tiling`) fill it in one pass on the torus, so the
   band's ends, which meet across the rolled image's edges, agree. The others (telea, ns, unified)
   cannot see across the edges, so they fill it in two passes: first the band away from the edges,
   then, rolled by another quarter so that they lie inside, the short pieces of band at the edges.
3. Roll back. The edges are now the middle of the filled band; every pixel outside the band is the
   input's, bit for bit (the inpaint composite guarantees it, and rolling only moves pixels).

`core.seams` measures the result: its wrap-around seams should be no louder than a typical line of
the image's interior.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from canvaslab.core.image import DEFAULT_MAX_PIXELS
from canvaslab.core.notices import collect_notices
from canvaslab.errors import InputError
from canvaslab.tasks.common import ImageInput, describe_input, make_recipe, open_image, resolve_seed, step_seed
from canvaslab.tasks.inpaint import inpaint
from canvaslab.tasks.requests import ENGINE_FIELDS, InpaintRequest, TextureRequest, Tiling, request_from
from canvaslab.tasks.result import Result

BAND_FRACTION = 1 / 8  # default half-width of the band: this share of the image's short side...
MIN_BAND = 8  # ...but at least this many pixels


def texture_seamless(
    image: ImageInput, request: TextureRequest | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS, **params: Any
) -> Result:
    """`image` made to tile along `axes` (x, y or both), same size.

    Parameters are the fields of `TextureRequest` (pass `request=` or keywords, not both): `axes`,
    `band` (half-width of the band filled over each seam, px) and the inpaint fields (engine, seed,
    prompt, model, ...). `Result.mask` marks the band; pixels outside it are the input's. The recipe
    records the band actually used, so a replay does not depend on the default.
    """
    request = request_from(TextureRequest, request, params)
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. inputs: the seed, the band, the shift that brings the seams to the middle
        source = open_image(image, max_pixels)
        seed = resolve_seed(request.seed)
        height, width = source.rgb.shape[:2]
        band = request.band or default_band((width, height))
        request = request.model_copy(update={"band": band})
        wrap_x, wrap_y = request.axes in (Tiling.x, Tiling.both), request.axes in (Tiling.y, Tiling.both)
        _check_band(band, width if wrap_x else None, height if wrap_y else None)
        shift = (height // 2 if wrap_y else 0, width // 2 if wrap_x else 0)
        hole = seam_band((height, width), shift, band, wrap_x=wrap_x, wrap_y=wrap_y)
        # 2. the work: fill the band over the rolled image, then roll back
        rolled = np.roll(source.rgb, shift, axis=(0, 1))
        filled = _fill(rolled, hole, request, seed, shift)
        final = np.roll(filled, (-shift[0], -shift[1]), axis=(0, 1))
        mask = np.roll(hole, (-shift[0], -shift[1]), axis=(0, 1))
        # 3. recipe (the alpha channel, if any, is the input's: only colours are filled)
        recipe, text = make_recipe("texture", request, seed, source.size, {"image": describe_input(image, source)})
    return Result(
        image=final, mask=mask, seed=seed, recipe=recipe, parameters=text, alpha=source.alpha,
        notices=list(notes), seconds=time.perf_counter() - started,
    )


def default_band(size: tuple[int, int]) -> int:
    """Half-width of the band for an image of `size` (width, height) when the request gives none."""
    return max(MIN_BAND, round(min(size) * BAND_FRACTION))


def seam_band(shape: tuple[int, int], shift: tuple[int, int], band: int, *, wrap_x: bool, wrap_y: bool) -> np.ndarray:
    """True over the band around the seams of an image rolled by `shift` (rows, columns): `band`
    pixels on each side of the line between rolled row/column shift - 1 and shift."""
    hole = np.zeros(shape, dtype=bool)
    if wrap_x:
        hole[:, shift[1] - band:shift[1] + band] = True
    if wrap_y:
        hole[shift[0] - band:shift[0] + band, :] = True
    return hole


def _check_band(band: int, width: int | None, height: int | None) -> None:
    # Half of each rolled axis at most is band: the engine needs the other half to copy from or follow.
    sides = [(side, name) for side, name in ((width, "wide"), (height, "high")) if side is not None]
    side, name = min(sides)
    if 4 * band > side:
        raise InputError(f"--band {band} is too wide for an image {side} px {name}: at most {side // 4} "
                         f"(the band covers 2 x band px around each seam)")


def _fill(rolled: np.ndarray, hole: np.ndarray, request: TextureRequest, seed: int, shift: tuple[int, int]) -> np.ndarray:
    """The rolled image with `hole` filled: one pass on the torus, or two for engines that cannot wrap."""
    if "tiling" in ENGINE_FIELDS.get(request.engine, frozenset()):
        return _inpaint(rolled, hole, request, seed, tiling=request.axes)
    # Pass 1 leaves out the band's pieces within `band` px of the rolled image's edges, which a
    # non-wrapping engine would fill without seeing their other half across the edge.
    band = int(request.band or 0)
    inner = hole.copy()
    if shift[0]:
        inner[:band], inner[-band:] = False, False
    if shift[1]:
        inner[:, :band], inner[:, -band:] = False, False
    first = _inpaint(rolled, inner, request, seed, tiling=Tiling.none)
    # Pass 2: roll a further quarter, so those pieces lie inside with filled band above and below them.
    quarter = (rolled.shape[0] // 4 if shift[0] else 0, rolled.shape[1] // 4 if shift[1] else 0)
    rest = np.roll(hole & ~inner, quarter, axis=(0, 1))
    second = _inpaint(np.roll(first, quarter, axis=(0, 1)), rest, request, step_seed(seed, 1), tiling=Tiling.none)
    return np.roll(second, (-quarter[0], -quarter[1]), axis=(0, 1))


def _inpaint(rgb: np.ndarray, hole: np.ndarray, request: TextureRequest, seed: int, *, tiling: Tiling) -> np.ndarray:
    """One inpaint of `hole` with the texture request's engine and settings."""
    if not hole.any():
        return rgb
    values = request.model_dump(exclude={"axes", "band"})
    inner = InpaintRequest.model_validate({**values, "seed": seed, "tiling": tiling})
    return inpaint(rgb, hole, request=inner).image
