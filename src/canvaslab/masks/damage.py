"""`--auto damage`: scratches, cracks and thin flaking on scanned prints and murals, with no model.

A scratch on a print is paper showing through (a bright line), a crack in a mural a dark one: both
are thin lines that differ strongly from the surface on both sides. `lines.line_response` measures that
contrast for lines up to `width` px wide; then, with hysteresis as in Canny's edge detector:

1. strong pixels: contrast >= `contrast` grey levels (default 80, out of 255);
2. weak pixels: contrast >= `contrast` / 2, kept only when 8-connected to a strong one (a scratch
   fades along its length; its faint stretches stay attached to its clear ones);
3. regions whose bounding box is shorter than `min_length` px along its diagonal are dropped (specks
   and texture grains are short; scratches and cracks are long).

What it cannot tell apart: thin lines that belong to the picture (whiskers, wires, rims, hair) are
found too. It works best on scans whose own detail is coarser than the damage (a print scanned at
600 dpi: scratches of 1-3 px on content that changes over 5 px or more). Check the mask, raise
`contrast`, lower `width`, or subtract a mask of what must stay (`canvaslab mask ops --subtract`).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from canvaslab.masks.lines import grey, line_response
from canvaslab.masks.ops import EIGHT


class DamageOptions(BaseModel):
    """--opt KEY=VALUE for --auto damage."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(3, ge=1, le=32, description="widest damage line, px (wider structures are not damage)")
    contrast: float = Field(80, gt=0, le=255, description="grey levels a line differs from both sides by (strong pixels; "
                            "half of it joins weak pixels to strong ones)")
    min_length: int = Field(25, ge=1, le=10000, description="shortest damage region, px along its bounding box diagonal")
    polarity: str = Field("both", pattern="^(both|bright|dark)$", description="bright (scratches), dark (cracks) or both")


def find_damage(rgb: np.ndarray, options: DamageOptions | None = None) -> np.ndarray:
    """HxW bool: the pixels of thin bright/dark damage lines in `rgb` (HxWx3 uint8)."""
    options = options or DamageOptions()
    bright, dark = line_response(grey(rgb), options.width)
    contrast = {"both": np.maximum(bright, dark), "bright": bright, "dark": dark}[options.polarity]
    weak = contrast >= options.contrast / 2
    labels, count = ndimage.label(weak, structure=EIGHT)
    if count == 0:
        return weak
    index = np.arange(1, count + 1)
    has_strong = ndimage.maximum(contrast, labels, index) >= options.contrast
    keep = np.zeros(count + 1, bool)
    for i, region in enumerate(ndimage.find_objects(labels)):
        height, width = region[0].stop - region[0].start, region[1].stop - region[1].start
        keep[i + 1] = bool(has_strong[i]) and np.hypot(height, width) >= options.min_length
    return keep[labels]
