"""Mask algebra: core.mask's boolean operations and masks.ops (holes, largest region, refine order)."""

from __future__ import annotations

import numpy as np
import pytest

from canvaslab.core.mask import grow, intersect, invert, shrink, subtract, union
from canvaslab.errors import InputError
from canvaslab.masks.ops import Refinement, fill_holes, largest, refine, regions


def disk(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius * radius


def test_union_intersect_subtract_invert():
    a, b = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    a[:, :4], b[:, 2:] = True, True
    np.testing.assert_array_equal(union(a, b), np.ones((6, 6), bool))
    np.testing.assert_array_equal(intersect(a, b), a & b)
    np.testing.assert_array_equal(subtract(a, b), a & ~b)
    np.testing.assert_array_equal(invert(a), ~a)
    assert subtract(a).sum() == a.sum()


def test_masks_of_different_sizes_are_refused_in_one_line():
    with pytest.raises(InputError, match="cannot unite masks of different sizes: 6x6 and 7x6"):
        union(np.zeros((6, 6), bool), np.zeros((6, 7), bool))


def test_shrink_is_the_dual_of_grow_and_leaves_the_border():
    mask = disk((41, 41), (20, 20), 12)
    np.testing.assert_array_equal(shrink(mask, 4), disk((41, 41), (20, 20), 12) & ~grow(~mask, 4))
    # brute force: a pixel stays when every pixel within 4 px of it is in the mask
    brute = np.array([[all(mask[y + dy, x + dx] for dy in range(-4, 5) for dx in range(-4, 5) if dy * dy + dx * dx <= 16)
                       if 4 <= y < 37 and 4 <= x < 37 else False for x in range(41)] for y in range(41)])
    np.testing.assert_array_equal(shrink(mask, 4), brute)
    full = np.ones((10, 10), bool)
    assert shrink(full, 2).sum() == 36  # the frame outside the image counts as outside the mask
    with pytest.raises(InputError, match="shrink must be >= 0"):
        shrink(full, -1)


def test_fill_holes_and_largest():
    ring = disk((30, 30), (15, 15), 10) & ~disk((30, 30), (15, 15), 4)
    np.testing.assert_array_equal(fill_holes(ring), disk((30, 30), (15, 15), 10))
    two = np.zeros((20, 40), bool)
    two[2:6, 2:6] = True  # 16 px
    two[8:18, 20:30] = True  # 100 px
    assert largest(two).sum() == 100 and largest(two)[10, 25]
    assert [r.sum() for r in regions(two)] == [100, 16]
    assert regions(two, min_area=20)[0].sum() == 100 and len(regions(two, min_area=20)) == 1


def test_refine_order_is_holes_largest_shrink_grow_invert():
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True
    mask[10:15, 10:15] = False  # a hole
    mask[30, 30] = True  # a speck
    out = refine(mask, Refinement(fill_holes=True, largest=True, shrink=1, grow=1))
    expected = np.zeros((40, 40), bool)
    expected[5:25, 5:25] = True
    for y, x in ((5, 5), (5, 24), (24, 5), (24, 24)):
        expected[y, x] = False  # an opening by a disk rounds the corners
    np.testing.assert_array_equal(out, expected)  # hole filled, speck gone
    assert refine(mask, Refinement()) is not mask and np.array_equal(refine(mask, Refinement()), mask)
    np.testing.assert_array_equal(refine(mask, Refinement(invert=True)), ~mask)


def test_feather_gives_levels_falling_across_the_edge():
    mask = np.zeros((41, 41), bool)
    mask[10:31, 10:31] = True
    levels = refine(mask, Refinement(feather=4))
    assert levels.dtype == np.float32 and levels.max() == 1.0
    assert levels[20, 20] == 1.0 and levels[20, 0] == 0.0
    row = levels[20, :20]
    assert np.all(np.diff(row) >= 0)  # rising towards the inside
    assert 0 < levels[20, 8] < levels[20, 12] < 1  # soft on both sides of the edge at column 10
    with pytest.raises(InputError, match="feather must be >= 0"):
        Refinement(feather=-1)
