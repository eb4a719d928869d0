"""Soft-mask levels in core/: reading them (polarity, exact 0 and 1), growing them (grey dilation by a disk),
carrying them through resize/pad like the mask, and the level-weighted composite."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from canvaslab.core.composite import composite
from canvaslab.core.geometry import AlignMode, align, align_levels, resize_levels, resize_mask
from canvaslab.core.image import levels_from_alpha, load_mask, load_mask_levels
from canvaslab.core.mask import grow, grow_levels
from canvaslab.errors import InputError


def test_levels_follow_the_mask_mode_and_a_0_255_mask_gives_load_masks_pixels():
    grey = np.zeros((6, 9), np.uint8)
    grey[1:3, 2:7] = 255
    grey[4, :] = 51  # 0.2
    white = load_mask_levels(grey, mode="white")
    black = load_mask_levels(grey, mode="black")
    assert white.dtype == np.float32 and white[1, 2] == 1.0 and white[0, 0] == 0.0
    assert white[4, 0] == pytest.approx(0.2) and black[4, 0] == pytest.approx(0.8)
    np.testing.assert_array_equal(white + black, np.ones_like(white))
    binary = np.where(grey == 255, 255, 0).astype(np.uint8)
    for mode in ("white", "black"):
        levels = load_mask_levels(binary, mode=mode)
        assert set(np.unique(levels)) <= {0.0, 1.0}
        np.testing.assert_array_equal(levels == 1.0, load_mask(binary, mode=mode))


def test_alpha_levels_are_transparency(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = [[0, 64, 128, 255]] * 4
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    levels = load_mask_levels(path, mode="alpha")
    np.testing.assert_allclose(levels[0], [1.0, 1 - 64 / 255, 1 - 128 / 255, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(levels, levels_from_alpha(rgba[..., 3]))
    with pytest.raises(InputError, match="mask mode 'alpha' needs a mask with transparency"):
        load_mask_levels(np.zeros((4, 4), np.uint8), mode="alpha")


def test_levels_resize_nearest_with_a_notice(caplog):
    grey = np.zeros((4, 4), np.uint8)
    grey[:2, :2] = 128
    levels = load_mask_levels(grey, size=(8, 8))
    assert levels.shape == (8, 8) and levels[:4, :4].min() == levels.max() and levels[4:, :].max() == 0
    assert any("resized it (nearest neighbour)" in r.getMessage() for r in caplog.records)


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 30), st.integers(3, 30), st.integers(0, 6), st.integers(0, 2**31 - 1))
def test_grow_levels_is_grey_dilation_by_a_disk_and_grow_on_binary_masks(h, w, radius, seed):
    rng = np.random.default_rng(seed)
    levels = (rng.random((h, w)) * (rng.random((h, w)) < 0.15)).astype(np.float32)
    grown = grow_levels(levels, radius)
    ys, xs = np.mgrid[0:h, 0:w]
    for y, x in [(rng.integers(h), rng.integers(w)) for _ in range(10)]:
        disk = (ys - y) ** 2 + (xs - x) ** 2 <= radius * radius
        assert grown[y, x] == levels[disk].max()
    binary = rng.random((h, w)) < 0.1
    np.testing.assert_array_equal(grow_levels(binary.astype(np.float32), radius) > 0, grow(binary, radius))


def test_grow_levels_rejects_negative():
    with pytest.raises(InputError, match="grow must be >= 0"):
        grow_levels(np.zeros((3, 3), np.float32), -1)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(2, 40), st.integers(1, 64), st.integers(0, 2**31 - 1))
def test_levels_travel_with_the_mask_through_resize_and_alignment(h, w, target, seed):
    rng = np.random.default_rng(seed)
    levels = (rng.random((h, w)) * (rng.random((h, w)) < 0.5)).astype(np.float32)
    size = (target, max(1, target // 2))
    np.testing.assert_array_equal(resize_levels(levels, size) > 0, resize_mask(levels > 0, size))
    for mode in AlignMode:
        _, mask, info = align(np.zeros((h, w, 3), np.uint8), levels > 0, 16, mode)
        aligned = align_levels(levels, info)
        np.testing.assert_array_equal(aligned > 0, mask)
        if mode == AlignMode.pad:
            np.testing.assert_array_equal(aligned[:h, :w], levels)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 30), st.integers(2, 30), st.floats(0, 8), st.integers(0, 2**31 - 1))
def test_level_0_keeps_the_input_level_1_takes_the_result_and_between_blends(h, w, feather, seed):
    rng = np.random.default_rng(seed)
    original = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    levels = rng.choice(np.array([0.0, 0.25, 0.5, 1.0], np.float32), (h, w))
    mask = levels > 0
    out = composite(original, generated, mask, feather, levels)
    np.testing.assert_array_equal(out[~mask], original[~mask])
    binary = composite(original, generated, mask, feather)
    np.testing.assert_array_equal(out[levels == 1], binary[levels == 1])  # level 1 is today's composite, exactly
    if feather == 0:
        np.testing.assert_array_equal(out[levels == 1], generated[levels == 1])
        half = levels == 0.5
        expected = np.rint(0.5 * generated[half].astype(np.float32) + 0.5 * original[half].astype(np.float32))
        np.testing.assert_array_equal(out[half], expected.astype(np.uint8))
    lower, higher = levels == 0.25, levels == 0.5
    distance = np.abs(out.astype(int) - original.astype(int)).sum(axis=-1)
    full = np.abs(generated.astype(int) - original.astype(int)).sum(axis=-1)
    assert (distance[lower] <= np.ceil(0.25 * full[lower]) + 3).all()
    assert (distance[higher] <= np.ceil(0.5 * full[higher]) + 3).all()
