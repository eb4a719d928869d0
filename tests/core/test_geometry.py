import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvaslab.core.geometry import AlignMode, Box, align, aligned_size, crop, crop_box_around, paste, restore
from canvaslab.errors import InputError


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.integers(1, 70), st.sampled_from([1, 8, 16, 64]), st.integers(0, 2**31 - 1))
def test_pad_align_round_trip_is_exact(h, w, multiple, seed):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.random((h, w)) < 0.3
    out_rgb, out_mask, info = align(rgb, mask, multiple, AlignMode.pad)
    assert out_rgb.shape[0] % multiple == 0 and out_rgb.shape[1] % multiple == 0
    assert out_mask.shape == out_rgb.shape[:2]
    np.testing.assert_array_equal(out_rgb[:h, :w], rgb)
    np.testing.assert_array_equal(out_mask[:h, :w], mask)
    assert not out_mask[h:, :].any() and not out_mask[:, w:].any()  # padding is context, not hole
    np.testing.assert_array_equal(restore(out_rgb, info), rgb)


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 90), st.integers(8, 90), st.sampled_from([8, 16]))
def test_resize_align_restores_the_exact_size(h, w, multiple):
    rgb = np.full((h, w, 3), 77, np.uint8)
    mask = np.zeros((h, w), bool)
    out_rgb, _, info = align(rgb, mask, multiple, AlignMode.resize)
    assert out_rgb.shape[0] % multiple == 0 and out_rgb.shape[1] % multiple == 0
    back = restore(out_rgb, info)
    assert back.shape == rgb.shape
    np.testing.assert_array_equal(back, rgb)  # a flat image survives Lanczos both ways


def test_aligned_size_modes():
    assert aligned_size((451, 300), 8, AlignMode.pad) == (456, 304)
    assert aligned_size((451, 300), 8, AlignMode.resize) == (448, 304)
    assert aligned_size((3, 3), 8, AlignMode.resize) == (8, 8)
    with pytest.raises(InputError, match="multiple"):
        aligned_size((4, 4), 0, AlignMode.pad)


def test_crop_box_pads_and_stays_inside():
    mask = np.zeros((100, 120), bool)
    mask[40:50, 60:70] = True
    box = crop_box_around(mask, 16)
    assert box == Box(44, 24, 86, 66)
    corner = np.zeros((100, 120), bool)
    corner[0:5, 115:120] = True
    box = crop_box_around(corner, 16, multiple=8)
    assert box.left >= 0 and box.top == 0 and box.right == 120 and box.bottom <= 100
    assert box.width % 8 == 0 and box.height % 8 == 0
    assert crop_box_around(np.zeros((5, 5), bool), 4) is None


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(2, 60), st.integers(0, 40), st.sampled_from([1, 8]), st.data())
def test_crop_box_contains_mask_and_fits_image(h, w, padding, multiple, data):
    y = data.draw(st.integers(0, h - 1))
    x = data.draw(st.integers(0, w - 1))
    mask = np.zeros((h, w), bool)
    mask[y, x] = True
    box = crop_box_around(mask, padding, multiple=multiple)
    assert 0 <= box.left <= x < box.right <= w
    assert 0 <= box.top <= y < box.bottom <= h
    if w >= multiple:
        assert box.width % multiple == 0 or box.width == w


def test_crop_and_paste_round_trip():
    rgb = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    box = Box(2, 3, 9, 8)
    patch = crop(rgb, box)
    assert patch.shape == (5, 7, 3)
    np.testing.assert_array_equal(paste(np.zeros_like(rgb), patch, box)[box.slices], patch)
    with pytest.raises(InputError, match="box is 7x5"):
        paste(rgb, patch[:-1], box)
