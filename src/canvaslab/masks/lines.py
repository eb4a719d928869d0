"""The thin-line response both rule masks for damage and text are built on.

A pixel on a thin line (a scratch, a crack, a letter's stroke) is brighter, or darker, than the image
on *both* sides of the line at once; a pixel on an edge between two regions differs from one side
only, and a pixel inside a wide region from neither. So, for 8 directions, compare each pixel with the
two pixels `width + 1` px away on either side across that direction:

    bright(p) = max over directions of min(I(p) - I(p + d), I(p - d))
    dark(p)   = max over directions of min(I(p + d) - I(p), I(p - d) - I(p))

in grey levels (0..255), where d is the step across the direction. Anything at most `width` px wide
gets the full contrast it has against its surroundings; anything wider gets nothing. It is a
morphological top-hat restricted to one direction at a time, which keeps it from answering at corners
and textures that are small in every direction. O(8 x pixels), numpy only.
"""

from __future__ import annotations

import numpy as np

DIRECTIONS = 8


def grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma as float32 grey levels 0..255 (what OpenCV's RGB2GRAY computes)."""
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = image[y - dy, x - dx], the border repeated where that falls outside."""
    height, width = image.shape
    padded = np.pad(image, ((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))), mode="edge")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[top:top + height, left:left + width]


def line_response(gray: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(bright, dark): how much brighter / darker than both sides each pixel is, for lines up to `width` px."""
    step = width + 1
    bright = np.full(gray.shape, -255.0, np.float32)
    dark = bright.copy()
    for k in range(DIRECTIONS):
        angle = np.pi * k / DIRECTIONS
        dx, dy = int(round(step * np.cos(angle))), int(round(step * np.sin(angle)))
        one, other = shifted(gray, dy, dx), shifted(gray, -dy, -dx)
        np.maximum(bright, np.minimum(gray - one, gray - other), out=bright)
        np.maximum(dark, np.minimum(one - gray, other - gray), out=dark)
    return bright, dark
