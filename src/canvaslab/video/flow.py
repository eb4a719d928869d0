"""Optical flow between neighbouring frames, completed inside the holes.

Flow comes from OpenCV's DIS (dense inverse search: fast, robust to the large smooth motions of a
panning camera), computed on grey frames scaled so the long side is at most `FlowSettings.size`
(flow is smooth; full resolution would cost four times more for little gain), and scaled back.

Inside a hole the flow DIS reports is the object's motion (or nonsense), not the background's that
propagation must follow. So, as in flow-guided video completion (Gao et al., ECCV 2020; ProPainter
does it with a network), it is thrown away there, and in a margin around the hole where the object's
edges blur into the estimate, and replaced by the smoothest field that meets the flow around it: the
harmonic interpolation (each unknown vector the mean of its four neighbours, the known ones fixed),
one sparse linear solve per flow field, both components at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import splu

from canvaslab.core.mask import grow

# DIS presets by name: ultrafast is ~4x faster than medium and noticeably rougher on fine texture.
PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
COMPLETION_GRID = 128  # long side (cells) of the grid the flow completion is solved on


@dataclass(frozen=True)
class FlowSettings:
    size: int = 512  # long side (px) flow is computed at; frames smaller than this keep their size
    preset: str = "medium"
    margin: float = 0.04  # the band around a hole whose flow is also replaced, as a share of the long side (>= 2 px)


class FlowEstimator:
    """Flow between two frames at the settings' scale; holes completed. One per thread (DIS holds state)."""

    def __init__(self, settings: FlowSettings, frame_size: tuple[int, int]) -> None:
        self.settings = settings
        width, height = frame_size
        self.scale = min(1.0, settings.size / max(width, height))
        self.size = (max(8, round(width * self.scale)), max(8, round(height * self.scale)))
        self.margin = max(2, math.ceil(settings.margin * max(self.size)))
        self._dis = cv2.DISOpticalFlow_create(PRESETS[settings.preset])

    def grey(self, rgb: np.ndarray, hole: np.ndarray | None = None) -> np.ndarray:
        """The frame as DIS reads it: luminance at the flow scale, the hole (flow scale) smoothly filled
        from its border first, so that the object in it does not drag the flow around it along."""
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self.size != (rgb.shape[1], rgb.shape[0]):
            grey = cv2.resize(grey, self.size, interpolation=cv2.INTER_AREA)
        if hole is not None and hole.any() and not hole.all():
            grey = cv2.inpaint(grey, hole.astype(np.uint8), 3, cv2.INPAINT_TELEA)
        return grey

    def small_mask(self, mask: np.ndarray) -> np.ndarray:
        if self.size == (mask.shape[1], mask.shape[0]):
            return mask
        return cv2.resize(mask.astype(np.uint8), self.size, interpolation=cv2.INTER_AREA) > 0

    def raw(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Flow (h x w x 2, at the flow scale, in its pixels) with source(p) ~ target(p + flow(p))."""
        return self._dis.calc(source, target, None)

    def completed(self, source: np.ndarray, target: np.ndarray, hole: np.ndarray | None) -> np.ndarray:
        """Flow from `source` to `target` (grey, flow scale) with the source's `hole` (flow scale) and a
        margin around it filled by harmonic interpolation."""
        flow = self.raw(source, target)
        if hole is not None and hole.any():
            flow = complete(flow, grow(hole, self.margin))
        return flow

    def at(self, flow: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """The flow at full-resolution pixels (xs, ys), in full-resolution pixels: N x 2 float32."""
        if self.scale == 1.0:
            return flow[ys, xs]
        h, w = flow.shape[:2]
        fx = np.clip((xs + 0.5) * self.scale - 0.5, 0, w - 1)
        fy = np.clip((ys + 0.5) * self.scale - 0.5, 0, h - 1)
        return bilinear(flow, fx, fy) / self.scale


def complete(flow: np.ndarray, unknown: np.ndarray, grid: int = COMPLETION_GRID) -> np.ndarray:
    """`flow` with the `unknown` pixels replaced by the harmonic interpolation of the others.

    The solve runs on a grid whose long side is at most `grid` cells (a cell is unknown when any of its
    pixels is; a known cell holds the mean of its pixels) and is scaled back up into the unknown pixels:
    the interpolant is smooth, and a direct solve at full size costs ~20x more (0.1 s per field at 512 px).
    """
    if not unknown.any():
        return flow
    if unknown.all():
        return np.zeros_like(flow)
    height, width = unknown.shape
    factor = max(1, math.ceil(max(height, width) / grid))
    if factor == 1:
        return _solve_harmonic(flow, unknown)
    size = (math.ceil(width / factor), math.ceil(height / factor))
    known = (~unknown).astype(np.float32)
    weight = cv2.resize(known, size, interpolation=cv2.INTER_AREA)
    coarse_unknown = weight < 1 - 1e-4
    coarse = cv2.resize(flow * known[..., None], size, interpolation=cv2.INTER_AREA) / np.maximum(weight, 1e-6)[..., None]
    coarse = _solve_harmonic(coarse.astype(np.float32), coarse_unknown)
    up = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    out = flow.copy()
    out[unknown] = up[unknown]
    return out


def _solve_harmonic(flow: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """Each unknown vector the mean of its in-image neighbours (a reflecting image border); known
    neighbours are the boundary condition. A region that touches no known pixel settles at zero."""
    if unknown.all():
        return np.zeros_like(flow)
    height, width = unknown.shape
    ys, xs = np.nonzero(unknown)
    count = len(ys)
    index = np.full(unknown.shape, -1, np.int64)
    index[ys, xs] = np.arange(count)
    rows, cols, rhs = [], [], np.zeros((count, 2), np.float64)
    diagonal = np.full(count, 1e-6)  # keeps a region cut off from every known pixel solvable (at zero)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        diagonal += inside
        neighbour = np.where(inside, index[np.clip(ny, 0, height - 1), np.clip(nx, 0, width - 1)], -1)
        free = inside & (neighbour >= 0)
        rows.append(np.nonzero(free)[0])
        cols.append(neighbour[free])
        fixed = inside & (neighbour < 0)
        rhs[fixed] += flow[ny[fixed], nx[fixed]]
    row = np.concatenate([np.arange(count), *rows])
    col = np.concatenate([np.arange(count), *cols])
    value = np.concatenate([diagonal, -np.ones(len(row) - count)])
    matrix = coo_matrix((value, (row, col)), shape=(count, count)).tocsc()
    solved = splu(matrix).solve(rhs)
    out = flow.copy()
    out[ys, xs] = solved.astype(np.float32)
    return out


def bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """`image` (H x W or H x W x C) sampled at float positions (inside [0, W-1] x [0, H-1])."""
    height, width = image.shape[:2]
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, width - 1)
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, height - 1)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (xs - x0).astype(np.float32), (ys - y0).astype(np.float32)
    if image.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)
