"""A clip whose true background is known: a slow pan across a photo with an object pasted over it.

Made from real photos (tests and benchmarks use the ones in `examples/`), so that a video inpainting
result can be scored against the truth: the object moves faster than the pan, so the background behind
it at one frame is visible at others (what propagation recovers), and the pan is an exact whole number
of pixels per frame, so the true background motion between frames is known without estimating it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from canvaslab.core.mask import grow


@dataclass(eq=False)
class SyntheticClip:
    frames: list[np.ndarray]  # HxWx3 uint8: the background with the object pasted in
    truth: list[np.ndarray]  # HxWx3 uint8: the background alone
    masks: list[np.ndarray]  # HxW bool: the object, grown by `margin` (what a user would paint)
    pan: int  # px the background moves left per frame: truth[t + 1][y, x] == truth[t][y, x + pan]
    fps: int = 25

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].shape[1], self.frames[0].shape[0]


def synthetic_clip(
    background: np.ndarray,
    thing: np.ndarray,
    *,
    frames: int = 12,
    size: tuple[int, int] = (96, 64),
    pan: int = 1,
    object_size: float = 0.4,
    speed: float | None = None,
    margin: int = 2,
    fps: int = 25,
) -> SyntheticClip:
    """`frames` frames of `size` (width, height) panning `pan` px per frame across `background`, with an
    ellipse cut from `thing` (`object_size` of the frame's height tall) crossing the frame left to right
    at `speed` px per frame (default: so that it crosses about two thirds of the frame)."""
    width, height = size
    span = width + pan * (frames - 1)
    photo = _cover(background, (span, height))
    obj_h = max(4, round(height * object_size))
    obj_w = max(4, round(obj_h * 1.3))
    sprite = np.asarray(Image.fromarray(thing).resize((obj_w, obj_h), Image.Resampling.LANCZOS))
    yy, xx = np.mgrid[:obj_h, :obj_w]
    shape = ((yy + 0.5 - obj_h / 2) / (obj_h / 2)) ** 2 + ((xx + 0.5 - obj_w / 2) / (obj_w / 2)) ** 2 <= 1
    if speed is None:
        speed = (width * 2 / 3) / max(1, frames - 1)
    top = (height - obj_h) // 2
    clip = SyntheticClip([], [], [], pan, fps)
    for t in range(frames):
        truth = photo[:, t * pan : t * pan + width].copy()
        left = round(width / 6 - obj_w / 2 + speed * t)
        frame, silhouette = truth.copy(), np.zeros((height, width), bool)
        _paste(frame, silhouette, sprite, shape, left, top)
        clip.truth.append(truth)
        clip.frames.append(frame)
        clip.masks.append(grow(silhouette, margin))
    return clip


def _cover(photo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`photo` scaled to cover `size` (width, height) and cropped to it around its centre."""
    width, height = size
    scale = max(width / photo.shape[1], height / photo.shape[0])
    scaled = Image.fromarray(photo).resize(
        (max(width, round(photo.shape[1] * scale)), max(height, round(photo.shape[0] * scale))), Image.Resampling.LANCZOS
    )
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return np.asarray(scaled)[top : top + height, left : left + width].copy()


def _paste(frame: np.ndarray, silhouette: np.ndarray, sprite: np.ndarray, shape: np.ndarray, left: int, top: int) -> None:
    height, width = silhouette.shape
    x0, x1 = max(0, left), min(width, left + sprite.shape[1])
    y0, y1 = max(0, top), min(height, top + sprite.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    inside = shape[y0 - top : y1 - top, x0 - left : x1 - left]
    frame[y0:y1, x0:x1][inside] = sprite[y0 - top : y1 - top, x0 - left : x1 - left][inside]
    silhouette[y0:y1, x0:x1] = inside

