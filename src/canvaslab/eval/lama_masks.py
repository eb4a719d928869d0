"""LaMa's evaluation masks: the sampling rules of its mask generator with the numbers of its configs.

LaMa (Suvorov et al., 2022) built its test sets with `bin/gen_mask_dataset.py` and the configs
`configs/data_gen/random_{thin,medium,thick}_{256,512}.yaml`. For each image:

1. resize (bicubic) so the short side is the config's size (256 or 512);
2. draw a mask over the whole resized image from a mixture: irregular strokes always (weight 1),
   plus rectangles with weight 0.3 in the medium and thick configs;
3. take a square crop (side = the short side) that reaches the mask's far edge (`min_overlap` 1);
4. reject the mask when it covers more than half of the crop (`max_tamper_area` 0.5) and draw again.

Strokes (`make_random_irregular_mask`): `count` polylines; each starts at a random pixel and has 1-5
segments; a segment's direction is 0.01 + one of {0, 1, 2, 3} radians (negated for even strokes), its
length and brush width drawn per segment. Rectangles (`make_random_rectangle_mask`): `count` boxes,
sides uniform in [min_size, max_size) clipped to the image minus a margin, placed inside the margin.

Ranges here are inclusive, in pixels of the resized image: LaMa's ``5 + randint(max_width)`` is
`width` (5, 4 + max_width), ``10 + randint(max_len)`` is `length` (10, 9 + max_len). The 256-px stroke
ranges are the training presets of `canvaslab.data.masks` (`STROKE_PRESETS`), which were read from
the same configs; only the direction rule differs there (training strokes turn by a random angle
at each vertex), so the protocol draws with LaMa's rule to keep its hole-size distribution.

Two deliberate differences: all randomness comes from one seeded `numpy.random.Generator` per case
(LaMa used the global NumPy state), and an empty crop is rejected too (LaMa's check for that,
``len(np.unique(mask)) == 0``, can never be true). To score against LaMa's published mask files
exactly, give them as a mask folder instead (`canvaslab eval protocol masks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from canvaslab.data.masks import STROKE_PRESETS

MAX_DRAWS = 100

Range = tuple[int, int]


@dataclass(frozen=True)
class Strokes:
    count: Range
    width: Range
    length: Range
    vertices: Range = (1, 5)
    max_angle: int = 4  # directions 0.01 + {0 .. max_angle - 1} radians


@dataclass(frozen=True)
class Boxes:
    count: Range
    min_size: int
    max_size: int  # exclusive, as LaMa's randint
    margin: int


@dataclass(frozen=True)
class LamaConfig:
    size: int  # short side after resizing; the crop is size x size
    strokes: Strokes | None
    boxes: Boxes | None
    box_weight: float  # strokes have weight 1 whenever they are drawn at all
    max_hole: float = 0.5  # LaMa's max_tamper_area


def _training_preset(name: str) -> Strokes:
    preset = STROKE_PRESETS[name]
    return Strokes(count=preset["count"], width=preset["width_px"], length=preset["length_px"], vertices=preset["vertices"])


# name -> the numbers of configs/data_gen/random_<name>.yaml (box-N: the rectangles of thick-N alone).
CONFIGS: dict[str, LamaConfig] = {
    "thin-256": LamaConfig(256, _training_preset("thin"), None, 0.0),
    "medium-256": LamaConfig(256, _training_preset("medium"), Boxes((1, 5), 10, 50, 0), 0.3),
    "thick-256": LamaConfig(256, _training_preset("thick"), Boxes((1, 3), 30, 150, 10), 0.3),
    "box-256": LamaConfig(256, None, Boxes((1, 3), 30, 150, 10), 1.0),
    "thin-512": LamaConfig(512, Strokes((4, 70), (5, 24), (10, 109)), None, 0.0),
    "medium-512": LamaConfig(512, Strokes((4, 10), (5, 104), (10, 209)), Boxes((1, 5), 30, 150, 0), 0.3),
    "thick-512": LamaConfig(512, Strokes((1, 5), (5, 254), (10, 459)), Boxes((1, 4), 30, 300, 10), 0.3),
    "box-512": LamaConfig(512, None, Boxes((1, 4), 30, 300, 10), 1.0),
}


def _between(rng: np.random.Generator, bounds: Range) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def draw_strokes(rng: np.random.Generator, height: int, width: int, p: Strokes) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    for stroke in range(_between(rng, p.count)):
        x, y = int(rng.integers(width)), int(rng.integers(height))
        for _ in range(_between(rng, p.vertices)):
            angle = 0.01 + int(rng.integers(p.max_angle))
            if stroke % 2 == 0:
                angle = 2 * math.pi - angle
            length = _between(rng, p.length)
            brush = _between(rng, p.width)
            # int() truncates toward zero like LaMa's astype(int32); ends may sit one past the edge
            end_x = min(max(int(x + length * math.sin(angle)), 0), width)
            end_y = min(max(int(y + length * math.cos(angle)), 0), height)
            cv2.line(mask, (x, y), (end_x, end_y), 1, brush)
            x, y = end_x, end_y
    return mask.astype(bool)


def draw_boxes(rng: np.random.Generator, height: int, width: int, p: Boxes) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    max_size = min(p.max_size, height - 2 * p.margin, width - 2 * p.margin)
    if max_size <= p.min_size:
        raise ValueError(f"a {width}x{height} image is too small for boxes of {p.min_size}+ px with a {p.margin} px margin")
    for _ in range(_between(rng, p.count)):
        box_w = int(rng.integers(p.min_size, max_size))
        box_h = int(rng.integers(p.min_size, max_size))
        left = int(rng.integers(p.margin, width - p.margin - box_w + 1))
        top = int(rng.integers(p.margin, height - p.margin - box_h + 1))
        mask[top : top + box_h, left : left + box_w] = True
    return mask


def draw_mixed(rng: np.random.Generator, height: int, width: int, config: LamaConfig) -> np.ndarray:
    """One draw of the config's mixture (strokes weight 1 when present, boxes `box_weight`)."""
    kinds = ([("strokes", 1.0)] if config.strokes else []) + ([("boxes", config.box_weight)] if config.boxes else [])
    weights = np.array([w for _, w in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))][0]
    if kind == "strokes":
        return draw_strokes(rng, height, width, config.strokes)  # type: ignore[arg-type]
    return draw_boxes(rng, height, width, config.boxes)  # type: ignore[arg-type]


def square_crop(rng: np.random.Generator, mask: np.ndarray, min_overlap: float = 1.0) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a square crop along the long side that reaches the mask (LaMa's
    `propose_random_square_crop`)."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    if height < width:
        size, low, high, extent = height, int(xs.min()), int(xs.max()), width
    else:
        size, low, high, extent = width, int(ys.min()), int(ys.max()), height
    reach = low + (high - low) * min_overlap
    first = max(0, min(extent - size - 1, int(reach - size)))
    last = max(first + 1, min(extent - size, int(reach)))
    start = int(rng.integers(first, last))
    return (start, 0, start + size, height) if height < width else (0, start, width, start + size)


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic (Pillow's, as LaMa) so the short side is `size`; the long side is rounded."""
    from PIL import Image

    height, width = image.shape[:2]
    factor = size / min(height, width)
    new = (max(size, round(width * factor)), max(size, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(new, Image.Resampling.BICUBIC))


def lama_case(rng: np.random.Generator, image: np.ndarray, config: LamaConfig) -> tuple[np.ndarray, np.ndarray]:
    """(square image, mask) for one case: resize, draw, crop, reject masks over `max_hole` or empty."""
    resized = resize_short_side(image, config.size)
    height, width = resized.shape[:2]
    for _ in range(MAX_DRAWS):
        mask = draw_mixed(rng, height, width, config)
        if not mask.any():
            continue
        left, top, right, bottom = square_crop(rng, mask)
        crop = mask[top:bottom, left:right]
        if crop.any() and crop.mean() <= config.max_hole:
            return np.ascontiguousarray(resized[top:bottom, left:right]), crop
    raise RuntimeError(f"no acceptable mask in {MAX_DRAWS} draws")  # not reached with LaMa's configs
