"""Mask editing without an editor: what `canvaslab mask ops` and every mask source's refinement do.

Masks are HxW bool arrays, True = fill (core.mask). Boolean algebra, grow, shrink and feather are
core's; this module adds what needs connected components (SciPy's labelling: filling holes, keeping
the largest region) and `refine`, which applies them in one fixed, documented order so that a
recipe's settings always mean the same mask:

    fill holes -> keep the largest region -> shrink -> grow -> invert -> feather

Shrinking before growing is an opening (removes specks and thin spurs narrower than 2 x shrink);
feathering last turns the hard mask into grey levels (a soft mask for `inpaint --soft`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from canvaslab.core.mask import feather as feather_inside
from canvaslab.core.mask import grow as grow_mask
from canvaslab.core.mask import invert as invert_mask
from canvaslab.core.mask import shrink as shrink_mask
from canvaslab.errors import InputError

# 8-connectivity: a region's diagonal neighbours are part of it (as a person tracing an object sees it).
EIGHT = np.ones((3, 3), bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every region of keep-pixels it encloses (not connected to the border) filled."""
    # 4-connected background: a hole whose pixels touch the outside only diagonally is still a hole.
    return ndimage.binary_fill_holes(mask)


def largest(mask: np.ndarray) -> np.ndarray:
    """Only the largest 8-connected region of the mask (ties: the first in reading order)."""
    labels, count = ndimage.label(mask, structure=EIGHT)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def regions(mask: np.ndarray, min_area: int = 1) -> list[np.ndarray]:
    """The 8-connected regions of the mask with at least `min_area` pixels, largest first."""
    labels, count = ndimage.label(mask, structure=EIGHT)
    sizes = np.bincount(labels.ravel())[1:]
    order = [i for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_area]
    return [labels == i + 1 for i in order]


@dataclass(frozen=True)
class Refinement:
    """The edits `refine` applies, in its order; the defaults change nothing."""

    fill_holes: bool = False
    largest: bool = False
    shrink: int = 0
    grow: int = 0
    invert: bool = False
    feather: float = 0.0

    def __post_init__(self) -> None:
        for name in ("shrink", "grow", "feather"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0 pixels, got {getattr(self, name)}")

    @property
    def is_identity(self) -> bool:
        return self == Refinement()


def refine(mask: np.ndarray, edits: Refinement) -> np.ndarray:
    """`mask` after `edits`: a bool mask, or float32 levels in [0, 1] when `edits.feather` > 0.

    Feathering softens the edge on both sides: the levels fall from 1 at `feather` px inside the
    edge to 0 at `feather` px outside it (pixels farther out stay exactly 0).
    """
    out = np.asarray(mask, bool)
    if edits.fill_holes:
        out = fill_holes(out)
    if edits.largest:
        out = largest(out)
    out = shrink_mask(out, edits.shrink)
    out = grow_mask(out, edits.grow)
    if edits.invert:
        out = invert_mask(out)
    if edits.feather > 0:
        # core.mask.feather ramps inside the mask only; grown first by the same width, the ramp is
        # centred on the original edge.
        reach = int(np.ceil(edits.feather))
        return feather_inside(grow_mask(out, reach), 2 * edits.feather)
    return out
