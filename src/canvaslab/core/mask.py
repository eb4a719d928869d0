"""Mask operations: grow, feather, bounding box, coverage checks.

A mask is an HxW ``bool`` array where True marks a pixel to fill. Loading masks from files (white /
black / alpha conventions) lives in `canvaslab.core.image`; this module only transforms them. Soft
inpainting reads a mask as grey levels instead: an HxW float32 array in [0, 1], how much each pixel may
change (0 keeps it); `grow_levels` is `grow` for those.

Mask algebra (`union`, `intersect`, `subtract`, `invert`, `shrink`) is plain boolean arithmetic on
masks of one size; what needs connected components (filling holes, keeping the largest region) lives
in `canvaslab.masks.ops`, which may use SciPy.

Distances are exact Euclidean distances up to a bounded radius, computed separably with vectorised
shifts (O(radius * pixels)), which keeps core/ free of OpenCV and SciPy while staying fast for the
radii people use (a few to a few dozen pixels).
"""

from __future__ import annotations

import math

import numpy as np

from canvaslab.errors import InputError


def as_mask(mask: object, *, shape: tuple[int, int] | None = None, name: str = "mask") -> np.ndarray:
    """Check that `mask` is an HxW boolean array (optionally of `shape`) and return it."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != bool:
        got = f"shape {mask.shape} dtype {mask.dtype}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise InputError(f"{name} must be a 2-D (height x width) boolean array, got {got}")
    if shape is not None and mask.shape != tuple(shape):
        raise InputError(f"{name} is {mask.shape[1]}x{mask.shape[0]} but the image is {shape[1]}x{shape[0]}")
    return mask


def _shift(arr: np.ndarray, offset: int, axis: int, fill: float) -> np.ndarray:
    """`arr` moved by `offset` along `axis` (out[i] = arr[i - offset]), new cells set to `fill`."""
    out = np.full_like(arr, fill)
    n = arr.shape[axis]
    if abs(offset) >= n:
        return out
    dst = [slice(None)] * arr.ndim
    src = [slice(None)] * arr.ndim
    if offset >= 0:
        dst[axis], src[axis] = slice(offset, n), slice(0, n - offset)
    else:
        dst[axis], src[axis] = slice(0, n + offset), slice(-offset, n)
    out[tuple(dst)] = arr[tuple(src)]
    return out


def squared_distance_to(region: np.ndarray, radius: int) -> np.ndarray:
    """Squared Euclidean distance from every pixel to the nearest True pixel of `region`.

    Exact up to `radius`; pixels farther away get ``inf``. The two passes are the classic separable
    decomposition d(y, x) = min_dy (g(y + dy, x) + dy^2) with g the row-wise distance.
    """
    radius = int(radius)
    inf = np.inf
    rows = np.where(region, 0.0, inf)
    best = rows.copy()
    for dx in range(1, radius + 1):
        cost = float(dx * dx)
        best = np.minimum(best, _shift(rows, dx, 1, inf) + cost)
        best = np.minimum(best, _shift(rows, -dx, 1, inf) + cost)
    result = best.copy()
    for dy in range(1, radius + 1):
        cost = float(dy * dy)
        result = np.minimum(result, _shift(best, dy, 0, inf) + cost)
        result = np.minimum(result, _shift(best, -dy, 0, inf) + cost)
    return result


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Dilate the mask by a disk of radius `px` pixels (0 returns a copy)."""
    if px < 0:
        raise InputError(f"grow must be >= 0 pixels, got {px}")
    if px == 0 or not mask.any():
        return mask.copy()
    return squared_distance_to(mask, px) <= px * px


def shrink(mask: np.ndarray, px: int) -> np.ndarray:
    """Erode the mask by a disk of radius `px` pixels: the pixels whose whole disk is inside the mask.

    Outside the image counts as outside the mask, so a mask touching the border shrinks away from it too.
    """
    if px < 0:
        raise InputError(f"shrink must be >= 0 pixels, got {px}")
    if px == 0 or not mask.any():
        return mask.copy()
    outside = np.pad(~mask, 1, constant_values=True)  # the frame around the image is "outside"
    return (squared_distance_to(outside, px) > px * px)[1:-1, 1:-1]


def _same_shape(masks: tuple[np.ndarray, ...], what: str) -> None:
    if not masks:
        raise InputError(f"{what} needs at least one mask")
    for other in masks[1:]:
        if other.shape != masks[0].shape:
            raise InputError(f"cannot {what} masks of different sizes: {masks[0].shape[1]}x{masks[0].shape[0]} "
                             f"and {other.shape[1]}x{other.shape[0]} (resize one to the other's image first)")


def union(*masks: np.ndarray) -> np.ndarray:
    """Pixels in any of the masks."""
    _same_shape(masks, "unite")
    return np.logical_or.reduce([np.asarray(m, bool) for m in masks])


def intersect(*masks: np.ndarray) -> np.ndarray:
    """Pixels in every one of the masks."""
    _same_shape(masks, "intersect")
    return np.logical_and.reduce([np.asarray(m, bool) for m in masks])


def subtract(mask: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """Pixels of `mask` in none of `others`."""
    _same_shape((mask, *others), "subtract")
    return np.asarray(mask, bool) & ~union(*others) if others else np.asarray(mask, bool).copy()


def invert(mask: np.ndarray) -> np.ndarray:
    """Fill becomes keep and keep becomes fill."""
    return ~np.asarray(mask, bool)


def grow_levels(levels: np.ndarray, px: int) -> np.ndarray:
    """Grey dilation of mask levels by a disk of radius `px`: each pixel takes the highest level within
    `px` pixels (0 returns a copy). On a 0/1 mask this is `grow`, exactly.

    The disk is a stack of rows: row dy spans |dx| <= isqrt(px^2 - dy^2). Walking dy from the disk's
    top to its middle, the row half-width only grows, so one running row maximum (widened by a shift
    on each side when it grows) serves every row: O(px * pixels), like `grow`.
    """
    if px < 0:
        raise InputError(f"grow must be >= 0 pixels, got {px}")
    if px == 0 or not levels.any():
        return levels.copy()
    rows = levels.copy()  # max over |dx| <= width along each row
    width = 0
    out = levels.copy()
    for dy in range(px, -1, -1):
        wanted = math.isqrt(px * px - dy * dy)
        while width < wanted:
            width += 1
            rows = np.maximum(rows, np.maximum(_shift(levels, width, 1, 0.0), _shift(levels, -width, 1, 0.0)))
        out = np.maximum(out, _shift(rows, dy, 0, 0.0))
        if dy:
            out = np.maximum(out, _shift(rows, -dy, 0, 0.0))
    return out


def feather(mask: np.ndarray, px: float) -> np.ndarray:
    """Soft compositing weights in [0, 1]: 0 outside the mask, rising to 1 within `px` pixels inside.

    The ramp lies entirely inside the mask, so compositing with it never changes a pixel outside the
    mask: that is what keeps the "unmasked pixels are untouched" promise while hiding seams.
    """
    if px < 0:
        raise InputError(f"feather must be >= 0 pixels, got {px}")
    weights = mask.astype(np.float32)
    if px == 0 or not mask.any() or mask.all():
        return weights
    reach = int(np.ceil(px)) + 1
    dist = np.sqrt(squared_distance_to(~mask, reach))  # >= 1 inside the mask
    ramp = np.clip(dist / (px + 1.0), 0.0, 1.0).astype(np.float32)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible kink where the ramp ends
    return np.where(mask, ramp, 0.0).astype(np.float32)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the True pixels, right/bottom exclusive; None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def coverage(mask: np.ndarray) -> float:
    """Fraction of pixels to fill."""
    return float(mask.mean()) if mask.size else 0.0
