"""`--auto text`: captions, dates, signs and other overlaid text, with no model.

OpenCV ships text *detectors* only as networks whose weights are separate downloads (EAST, DB) or in
the contrib build (ER filters); so this is an edge/stroke heuristic instead, in three steps:

1. strokes: pixels brighter or darker than both sides by at least `contrast` grey levels across
   lines up to `stroke` px wide (`lines.line_response`): a letter's strokes, at any orientation;
2. characters: connected stroke regions between `min_height` and `max_height` px tall and at most
   2.5 x as wide as tall (a letter, a digit, a ligature);
3. lines of text: characters closed horizontally by the median character height merge into a line;
   a line is kept when it is at least twice as wide as tall and holds at least 3 characters.

The mask is the strokes of the kept lines (grow it by a few px before inpainting: anti-aliased letter
edges are fainter than `contrast`). Bright text on dark and dark text on light are searched separately.
What it misses: single letters, text wider strokes than `stroke`, text of little contrast with what
is behind it. What it finds by mistake: rows of small high-contrast things (fences, window grids).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from canvaslab.masks.lines import grey, line_response
from canvaslab.masks.ops import EIGHT


class TextOptions(BaseModel):
    """--opt KEY=VALUE for --auto text."""

    model_config = ConfigDict(extra="forbid")

    stroke: int = Field(6, ge=1, le=64, description="widest letter stroke, px")
    contrast: float = Field(50, gt=0, le=255, description="grey levels a stroke differs from both sides by")
    min_height: int = Field(8, ge=2, le=4096, description="smallest character height, px")
    max_height: int = Field(80, ge=2, le=4096, description="largest character height, px")
    min_chars: int = Field(3, ge=1, le=100, description="fewest characters on a line of text")


def find_text(rgb: np.ndarray, options: TextOptions | None = None) -> np.ndarray:
    """HxW bool: the strokes of text lines in `rgb` (HxWx3 uint8)."""
    options = options or TextOptions()
    found = np.zeros(rgb.shape[:2], bool)
    for contrast in line_response(grey(rgb), options.stroke):  # bright text, then dark text
        found |= _text_strokes(contrast >= options.contrast, options)
    return found


def _text_strokes(strokes: np.ndarray, options: TextOptions) -> np.ndarray:
    labels, count = ndimage.label(strokes, structure=EIGHT)
    if count == 0:
        return strokes
    boxes = ndimage.find_objects(labels)
    heights = np.array([box[0].stop - box[0].start for box in boxes])
    widths = np.array([box[1].stop - box[1].start for box in boxes])
    is_char = (heights >= options.min_height) & (heights <= options.max_height) & (widths <= 2.5 * heights)
    if not is_char.any():
        return np.zeros_like(strokes)
    chars = np.isin(labels, np.flatnonzero(is_char) + 1)
    reach = max(3, int(np.median(heights[is_char])))
    lines = ndimage.binary_closing(np.pad(chars, ((0, 0), (reach, reach))), structure=np.ones((1, reach), bool))
    lines = lines[:, reach:-reach]
    line_labels, line_count = ndimage.label(lines, structure=EIGHT)
    out = np.zeros_like(strokes)
    for i, box in enumerate(ndimage.find_objects(line_labels), 1):
        region = line_labels[box] == i
        height, width = region.shape
        inside = labels[box][region & chars[box]]
        if width >= 2 * height and len(np.unique(inside)) >= options.min_chars:
            out[box] |= region & chars[box]
    return out
