"""Tiled filling for canvases larger than an engine's working size (GLID-3-xl style).

A diffusion model trained at 512 px falls apart (repeated subjects, broken structure) on a 2048 px
canvas and its cost grows with the square of the side. Instead we fill the hole window by window:
each window has the model's native size, overlaps what is already there, and only its still-empty
pixels are generated, so every window is conditioned on the known image and on earlier windows.
The number of windows, and so the cost, grows with the area of the hole.
"""

from __future__ import annotations

import numpy as np

from canvaslab.core.geometry import Box
from canvaslab.engines import Engine, EngineOptions
from canvaslab.tasks.common import run_engine, step_seed
from canvaslab.tasks.conditioning import Conditioning
from canvaslab.tasks.requests import TaskRequest, Tiling

AUTO_FACTOR = 2.0  # tile automatically once the canvas is this many times the engine's preferred size


def tile_size(request: TaskRequest, engine: Engine, options: EngineOptions, size: tuple[int, int]) -> int | None:
    """The window size to use for a canvas of `size`, or None to fill it in one go."""
    if request.tile == 0 or request.tiling != Tiling.none:
        return None  # (--tiling: the whole canvas must wrap around in one go; --tile N is refused with it)
    if request.tile is not None:
        return request.tile if max(size) > request.tile else None
    preferred = engine.preferred_size(request.generation(), options)
    if preferred is None or max(size) <= AUTO_FACTOR * preferred:
        return None
    return preferred


def window_boxes(mask: np.ndarray, tile: int, overlap: int) -> list[Box]:
    """Windows of `tile` px covering the mask's bounding box, `overlap` px apart, kept inside the canvas."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    stride = max(1, tile - overlap)

    def starts(low: int, high: int, limit: int) -> list[int]:
        span = min(tile, limit)
        first = max(0, min(low, limit - span))
        positions = list(range(first, max(first, high - span) + 1, stride))
        if positions[-1] + span < high:
            positions.append(min(limit - span, high - span))
        return positions

    return [
        Box(x, y, min(width, x + tile), min(height, y + tile))
        for y in starts(int(ys.min()), int(ys.max()) + 1, height)
        for x in starts(int(xs.min()), int(xs.max()) + 1, width)
    ]


def fill_tiled(
    engine: Engine,
    canvas: np.ndarray,
    mask: np.ndarray,
    request: TaskRequest,
    options: EngineOptions,
    seed: int,
    tile: int,
    levels: np.ndarray | None = None,
    conditioning: Conditioning | None = None,
) -> np.ndarray:
    """Fill `mask` window by window, most-known-context first; returns the filled canvas. `levels` (soft
    inpainting) give each window's still-empty pixels their own levels; control images are cut like the canvas."""
    current = canvas.copy()
    todo = mask.copy()
    windows = window_boxes(mask, tile, overlap=tile // 4)
    index = 0
    while todo.any():
        # Greedy and deterministic: the window whose pixels are best known goes next.
        box = max(windows, key=lambda b: (todo[b.slices].any(), -todo[b.slices].mean()))
        hole = todo[box.slices]
        window_levels = None if levels is None else np.where(hole, levels[box.slices], np.float32(0))
        patch = run_engine(engine, current[box.slices], hole, request, options, step_seed(seed, index), levels=window_levels,
                           conditioning=None if conditioning is None else conditioning.cropped(box))
        current[box.slices] = np.where(hole[..., None], patch, current[box.slices])
        todo[box.slices] = False
        index += 1
    return current
