"""`--auto watermark`: a logo or text stamped at the same place on many images, found by consensus.

The idea of Dekel et al., "On the Effectiveness of Visible Watermarks" (CVPR 2017): across many
photos, the image content under a fixed-position watermark changes, the watermark does not. So the
per-pixel *median* of the images' gradients (x and y separately, signed) keeps the watermark's edges
and cancels the photos' own, whose directions vary from image to image:

1. every image as grey levels in [0, 1], resized to the most common size among them (a watermark
   placed at the same *relative* position; images of other sizes are resized, so their mask is too);
2. Sobel gradients gx, gy per image; their medians over the images; the median gradient's magnitude;
3. edges: magnitude above median + `sensitivity` x 1.4826 x MAD of the magnitude (robust z-score;
   default 8) and above `floor` (0.05);
4. the watermark's area: edges closed by a square of 2 x `close` + 1 px (default 3), holes filled,
   eroded by 1 px (a 3x3 Sobel spreads an edge over the pixels on both sides of it), regions under
   `min_area` px dropped.

It needs several images (at least 3; 10 or more make the median reliable) and finds what is the same
in all of them, so a border or frame every photo has is found too. Semi-transparent and opaque
watermarks alike: only their edges must be the same everywhere.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from canvaslab.errors import InputError
from canvaslab.masks.lines import grey
from canvaslab.masks.ops import EIGHT, fill_holes

MIN_IMAGES = 3


class WatermarkOptions(BaseModel):
    """--opt KEY=VALUE for --auto watermark."""

    model_config = ConfigDict(extra="forbid")

    sensitivity: float = Field(8.0, gt=0, le=100, description="robust z-score of the median gradient an edge needs (lower finds fainter marks)")
    floor: float = Field(0.05, ge=0, le=4, description="smallest median gradient magnitude that is an edge (grey in 0..1 per px)")
    close: int = Field(3, ge=0, le=64, description="gaps between the watermark's edges closed, px")
    min_area: int = Field(30, ge=1, le=10_000_000, description="smallest watermark region, px")


def common_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The most common (width, height) among `sizes` (ties: the first seen)."""
    return Counter(sizes).most_common(1)[0][0]


def find_watermark(images: list[np.ndarray], options: WatermarkOptions | None = None) -> np.ndarray:
    """HxW bool at the images' most common size: the watermark they all share."""
    options = options or WatermarkOptions()
    if len(images) < MIN_IMAGES:
        raise InputError(f"--auto watermark finds what {MIN_IMAGES} or more images share; got {len(images)} "
                         "(pass a folder with --images)")
    width, height = common_size([(rgb.shape[1], rgb.shape[0]) for rgb in images])
    gx = np.empty((len(images), height, width), np.float32)
    gy = np.empty_like(gx)
    for i, rgb in enumerate(images):
        if (rgb.shape[1], rgb.shape[0]) != (width, height):
            rgb = np.asarray(Image.fromarray(rgb[..., :3]).resize((width, height), Image.Resampling.BILINEAR))
        g = grey(rgb) / 255.0
        gx[i], gy[i] = ndimage.sobel(g, axis=1), ndimage.sobel(g, axis=0)
    magnitude = np.hypot(np.median(gx, axis=0), np.median(gy, axis=0))
    center = float(np.median(magnitude))
    spread = 1.4826 * float(np.median(np.abs(magnitude - center)))
    edges = magnitude > max(center + options.sensitivity * spread, options.floor)
    return _area_of(edges, options)


def _area_of(edges: np.ndarray, options: WatermarkOptions) -> np.ndarray:
    r = options.close
    if r:
        # Padded, so that a watermark touching the border closes like one inside.
        square = np.ones((2 * r + 1, 2 * r + 1), bool)
        edges = ndimage.binary_closing(np.pad(edges, r), structure=square)[r:-r, r:-r]
    area = ndimage.binary_erosion(fill_holes(edges), structure=np.ones((3, 3), bool))
    labels, count = ndimage.label(area, structure=EIGHT)
    if count == 0:
        return area
    sizes = np.bincount(labels.ravel())[1:]
    return np.isin(labels, np.flatnonzero(sizes >= options.min_area) + 1)
