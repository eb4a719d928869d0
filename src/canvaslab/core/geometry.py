"""Geometry shared by every engine: size alignment with exact restore, crop-around-mask, paste-back.

Engines want sizes that are multiples of some number (8 for latent diffusion, the patch grid for
token models). `align` pads (reflecting the image) or resizes to such a size and returns an
`Alignment` that `restore` uses to come back to the exact original size. Tasks then composite with
the original, so pixels outside the mask are bit-identical whatever the engine did.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from PIL import Image

from canvaslab.errors import InputError


class AlignMode(str, Enum):
    pad = "pad"
    resize = "resize"


@dataclass(frozen=True)
class Box:
    """A rectangle in pixel coordinates; right and bottom are exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)


@dataclass(frozen=True)
class Alignment:
    """How an image was brought to an aligned size, so that `restore` can undo it exactly."""

    original_size: tuple[int, int]  # (width, height)
    aligned_size: tuple[int, int]
    mode: AlignMode


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def aligned_size(size: tuple[int, int], multiple: int, mode: AlignMode) -> tuple[int, int]:
    """The size `align` would produce: padded up, or resized to the nearest multiple (at least one)."""
    if multiple < 1:
        raise InputError(f"multiple must be >= 1, got {multiple}")
    width, height = size
    if mode == AlignMode.pad:
        return round_up(width, multiple), round_up(height, multiple)
    return (max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple))


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxWx3 uint8 image to (width, height) with Lanczos (a no-op copy when equal)."""
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb.copy()
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to (width, height), nearest neighbour (keeps it hard-edged)."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask.copy()
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize(size, Image.Resampling.NEAREST)) >= 128


def resize_levels(levels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize soft-mask levels (HxW float32) to (width, height), nearest neighbour: the same pixels
    `resize_mask` samples, so `levels > 0` stays the resized mask."""
    if (levels.shape[1], levels.shape[0]) == tuple(size):
        return levels.copy()
    img = Image.fromarray(np.ascontiguousarray(levels, dtype=np.float32))  # mode "F"
    return np.asarray(img.resize(size, Image.Resampling.NEAREST), dtype=np.float32)


def align_levels(levels: np.ndarray, info: Alignment) -> np.ndarray:
    """Soft-mask levels brought to `info`'s aligned size as `align` brought the mask: padding is
    level 0 (known context), a resize is nearest neighbour."""
    width, height = info.aligned_size
    if (levels.shape[1], levels.shape[0]) == (width, height):
        return levels
    if info.mode == AlignMode.pad:
        return np.pad(levels, ((0, height - levels.shape[0]), (0, width - levels.shape[1])), mode="constant")
    return resize_levels(levels, (width, height))


def align(
    rgb: np.ndarray, mask: np.ndarray, multiple: int, mode: AlignMode = AlignMode.pad
) -> tuple[np.ndarray, np.ndarray, Alignment]:
    """Bring image and mask to a size that is a multiple of `multiple`.

    `pad` reflects the image into the new right/bottom margin and marks that margin as known
    context (it is cut away again by `restore`); `resize` scales both.
    """
    height, width = mask.shape
    target = aligned_size((width, height), multiple, AlignMode(mode))
    info = Alignment((width, height), target, AlignMode(mode))
    if target == (width, height):
        return rgb, mask, info
    if info.mode == AlignMode.pad:
        pad_y, pad_x = target[1] - height, target[0] - width
        # "symmetric" needs no more than the image's own size; tiny images fall back to edge copies.
        img_mode = "symmetric" if pad_y <= height and pad_x <= width else "edge"
        rgb_out = np.pad(rgb, ((0, pad_y), (0, pad_x), (0, 0)), mode=img_mode)
        mask_out = np.pad(mask, ((0, pad_y), (0, pad_x)), mode="constant", constant_values=False)
        return rgb_out, mask_out, info
    return resize_rgb(rgb, target), resize_mask(mask, target), info


def restore(rgb: np.ndarray, info: Alignment) -> np.ndarray:
    """Undo `align`: crop the padding away or resize back to the exact original size."""
    width, height = info.original_size
    if info.mode == AlignMode.pad:
        return np.ascontiguousarray(rgb[:height, :width])
    return resize_rgb(rgb, (width, height))


def crop_box_around(
    mask: np.ndarray, padding: int, *, multiple: int = 1, min_size: int = 0
) -> Box | None:
    """The mask's bounding box grown by `padding` on every side, kept inside the image.

    The box is widened (within the image) to a multiple of `multiple` and to at least `min_size`,
    so that engines get context on all sides and an aligned size where possible. None when the
    mask is empty.
    """
    if padding < 0:
        raise InputError(f"padding must be >= 0 pixels, got {padding}")
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    left, right = _widen(int(xs[0]) - padding, int(xs[-1]) + 1 + padding, width, multiple, min_size)
    top, bottom = _widen(int(ys[0]) - padding, int(ys[-1]) + 1 + padding, height, multiple, min_size)
    return Box(left, top, right, bottom)


def _widen(start: int, stop: int, limit: int, multiple: int, min_size: int) -> tuple[int, int]:
    """Clamp [start, stop) to [0, limit), then grow it evenly to the wanted length if room allows."""
    start, stop = max(0, start), min(limit, stop)
    want = max(stop - start, min_size)
    want = min(limit, round_up(want, max(1, multiple)))
    extra = want - (stop - start)
    start -= extra // 2
    stop += extra - extra // 2
    if start < 0:
        stop, start = stop - start, 0
    if stop > limit:
        start, stop = start - (stop - limit), limit
    return max(0, start), stop


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    return np.ascontiguousarray(array[box.slices])


def paste(dest: np.ndarray, patch: np.ndarray, box: Box) -> np.ndarray:
    """A copy of `dest` with `patch` written into `box` (patch must be the box's size)."""
    if patch.shape[:2] != (box.height, box.width):
        raise InputError(
            f"patch is {patch.shape[1]}x{patch.shape[0]} but the box is {box.width}x{box.height}"
        )
    out = dest.copy()
    out[box.slices] = patch
    return out
