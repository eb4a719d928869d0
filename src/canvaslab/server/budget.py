"""Every size a job will work at, derived before it is queued and checked against the server's limits.

A small upload can ask for a lot of work: `size=8192` on a 64x64 image (PatchMatch on 67 MP), an
outpaint `expand` of 8 on every side, a `multiple` of 1024, `tile=8` on a big canvas (thousands of
engine runs), an A1111 width/height. The tasks derive their working sizes from the request, the
image, the mask and the engine; this module derives them the same way, with the same helpers
(`tasks.common.working_size`, `core.geometry.aligned_size`, `tasks.inpaint.masked_crop`,
`tasks.tiles.tile_size`/`window_boxes`, `tasks.outpaint.plan_steps`), so that work over the pixel
limit is a 400 naming the field before it holds the worker. What a job may still cost in time is
bounded by the queue's per-job budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from canvaslab.core.geometry import aligned_size
from canvaslab.core.image import LoadedImage
from canvaslab.server.inputs import ClientError
from canvaslab.server.settings import ServerSettings

# Engine runs one tiled result may take (a 2048 px canvas in 512 px windows is 25).
MAX_WINDOWS = 256


def check_work(task: str, request: Any, image: LoadedImage | None, mask: bytes | None, settings: ServerSettings) -> None:
    """Raise ClientError (400, naming the field) when any size the task would work at is over the limit."""
    if task == "inpaint":
        _check_inpaint(request, image, mask, settings)  # type: ignore[arg-type]
    elif task == "outpaint":
        _check_outpaint(request, image, settings)  # type: ignore[arg-type]
    elif task == "edit":
        engine, _ = _engine(request)
        size = aligned_size(image.size, request.multiple or engine.pad_multiple, request.align)  # type: ignore[union-attr]
        _check(size, settings, "multiple", "the edit's working size")
    elif task == "generate":
        _check(_generate_size(request), settings, "size" if request.size else "width", "the picture")


def _engine(request: Any) -> tuple[Any, Any]:
    from canvaslab.engines import get_engine

    engine = get_engine(request.engine)
    return engine, engine.parse_options(request.options)


def _check_inpaint(request: Any, image: LoadedImage, mask: bytes | None, settings: ServerSettings) -> None:
    from canvaslab.core.mask import grow
    from canvaslab.tasks.inpaint import load_hole, masked_crop
    from canvaslab.tasks.requests import InpaintArea
    from canvaslab.tasks.tiles import tile_size

    hole = load_hole(mask, image, request, settings.max_pixels)
    if not hole.any():
        return  # nothing to fill: the task returns the input
    hole = grow(hole, request.grow)
    engine, options = _engine(request)
    if request.area == InpaintArea.masked:
        box, long_side = masked_crop(hole, request, engine, options)
        _check(_engine_size((box.width, box.height), long_side, request, engine), settings, "size",
               "the crop around the mask, at its working size,")
    elif (tile := tile_size(request, engine, options, image.size)) is not None:
        _check_windows(hole, tile, request, engine, settings)
    else:
        field = "size" if request.size else "multiple"
        _check(_engine_size(image.size, request.size, request, engine), settings, field, "the working size")


def _check_outpaint(request: Any, image: LoadedImage, settings: ServerSettings) -> None:
    from canvaslab.core.canvas import total_expansion
    from canvaslab.tasks.outpaint import plan_steps
    from canvaslab.tasks.tiles import tile_size

    steps = plan_steps(request, image.size)
    field = "expand" if request.expand is not None else next(
        (side for side in ("left", "right", "top", "bottom") if getattr(request, side)), "left")
    # The canvas only grows, step by step: the final one is the largest.
    _check(total_expansion(steps).new_size(image.size), settings, field, "the outpainted canvas")
    engine, options = _engine(request)
    canvas, windows = image.size, 0
    for step in steps:
        canvas = step.new_size(canvas)
        tile = tile_size(request, engine, options, canvas)
        if tile is not None:
            # At most: the windows covering the whole canvas (the step's mask is a band of it).
            windows += _check_windows(np.ones(canvas[::-1], bool), tile, request, engine, settings, windows)
        else:
            _check(_engine_size(canvas, request.size, request, engine), settings, "size" if request.size else field,
                   "the working size")


def _check_windows(hole: np.ndarray, tile: int, request: Any, engine: Any, settings: ServerSettings,
                   before: int = 0) -> int:
    from canvaslab.tasks.tiles import window_boxes

    boxes = window_boxes(hole, tile, overlap=tile // 4)
    if before + len(boxes) > MAX_WINDOWS:
        raise ClientError(f"tile={tile} splits the work into {before + len(boxes):,} windows; the server runs at most "
                          f"{MAX_WINDOWS} per image: use a larger tile, or tile=0", field="tile")
    for box in boxes:
        _check(_engine_size((box.width, box.height), None, request, engine), settings, "tile", "a tile window")
    return len(boxes)


def _engine_size(size: tuple[int, int], long_side: int | None, request: Any, engine: Any) -> tuple[int, int]:
    """What `tasks.common.run_engine` hands the engine: scaled to `long_side`, then aligned to its multiple."""
    from canvaslab.tasks.common import working_size

    multiple = request.multiple or engine.pad_multiple
    return aligned_size(working_size(size, long_side, multiple) or size, multiple, request.align)


def _generate_size(request: Any) -> tuple[int, int]:
    """`tasks.generate`'s size: size x size, or width x height with the model's native side for what is missing."""
    if request.size is not None:
        return request.size, request.size
    if request.width is not None and request.height is not None:
        return request.width, request.height
    engine, options = _engine(request)
    side = engine.preferred_size(request.generation(), options) or 512
    return request.width or side, request.height or side


def _check(size: tuple[int, int], settings: ServerSettings, field: str, what: str) -> None:
    width, height = size
    if width * height > settings.max_pixels:
        raise ClientError(f"{what} would be {width}x{height} = {width * height:,} pixels, over the server's pixel limit "
                          f"of {settings.max_pixels:,} (--max-pixels)", field=field)
