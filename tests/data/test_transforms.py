"""Joint transforms: one geometry for target, mask and inputs; exact sizes; SDXL crop bookkeeping."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvaslab.data.records import Example
from canvaslab.data.transforms import fit_example, sample_rng
from canvaslab.errors import InputError

RED = (255, 0, 0)


def marked(width, height, left, top, side=4):
    """A dark image with one red square at (left, top), and the matching mask."""
    image = np.full((height, width, 3), 30, np.uint8)
    image[top : top + side, left : left + side] = RED
    mask = np.zeros((height, width), bool)
    mask[top : top + side, left : left + side] = True
    return image, mask


def red_box(image):
    ys, xs = np.nonzero((image[..., 0] > 128) & (image[..., 1] < 128))
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_centre_crop_without_resize_moves_pixels_by_the_crop_offset():
    image, mask = marked(64, 32, left=20, top=10)
    result = fit_example(Example("k", image, "c", mask, [image.copy()]), (32, 32), np.random.default_rng(0))
    assert red_box(result.image) == (4, 10, 7, 13)  # cropped 16 px from the left
    assert red_box(result.inputs[0]) == (4, 10, 7, 13)
    assert result.mask.dtype == bool and np.array_equal(np.argwhere(result.mask)[[0, -1]], [[10, 4], [13, 7]])
    assert result.original_size == (64, 32) and result.crop_top_left == (0, 16)


def test_flip_mirrors_everything_and_records_the_crop_in_the_flipped_image():
    image, mask = marked(64, 32, left=20, top=10)
    for seed in range(20):  # some seed flips
        result = fit_example(Example("k", image, "c", mask, [image]), (32, 32), np.random.default_rng(seed), random_flip=True)
        if red_box(result.image) != (4, 10, 7, 13):
            break
    assert red_box(result.image) == (24, 10, 27, 13)
    assert red_box(result.inputs[0]) == (24, 10, 27, 13)
    assert np.array_equal(result.mask, (result.image[..., 0] > 128) & (result.image[..., 1] < 128))
    assert result.crop_top_left == (0, 16)  # centre crop: the same offset from either side


@settings(max_examples=40, deadline=None)
@given(
    source=st.tuples(st.integers(8, 120), st.integers(8, 120)),
    size=st.tuples(st.integers(8, 96), st.integers(8, 96)),
    seed=st.integers(0, 2**32 - 1),
    crop=st.booleans(),
    flip=st.booleans(),
)
def test_sizes_are_exact_and_input_follows_the_target(source, size, seed, crop, flip):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 256, (source[1], source[0], 3), dtype=np.uint8)
    mask = rng.random((source[1], source[0])) < 0.3
    example = Example("k", target, "c", mask, [target.copy(), 255 - target])
    result = fit_example(example, size, np.random.default_rng(seed), random_crop=crop, random_flip=flip)
    assert result.image.shape == (size[1], size[0], 3) and result.image.dtype == np.uint8
    assert result.mask.shape == (size[1], size[0]) and result.mask.dtype == bool
    assert all(frame.shape == result.image.shape for frame in result.inputs)
    np.testing.assert_array_equal(result.inputs[0], result.image)  # the same geometry, pixel for pixel
    # Lanczos is linear: the inverted input stays the inverted target, up to rounding.
    assert np.abs(result.inputs[1].astype(int) - (255 - result.image.astype(int))).max() <= 1
    top, left = result.crop_top_left
    assert top >= 0 and left >= 0 and result.original_size == source


def test_downscaled_mask_stays_a_hard_mask_on_the_marked_region():
    image, mask = marked(128, 128, left=40, top=40, side=32)
    result = fit_example(Example("k", image, "c", mask), (64, 64), np.random.default_rng(0))
    assert result.mask.dtype == bool
    assert np.array_equal(np.argwhere(result.mask)[[0, -1]], [[20, 20], [35, 35]])


def test_same_rng_same_result_and_random_crops_vary():
    image = np.random.default_rng(1).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    example = Example("k", image, "c")
    first = fit_example(example, (40, 40), sample_rng(3, 0, 7), random_crop=True, random_flip=True)
    again = fit_example(example, (40, 40), sample_rng(3, 0, 7), random_crop=True, random_flip=True)
    np.testing.assert_array_equal(first.image, again.image)
    assert first.crop_top_left == again.crop_top_left
    offsets = {fit_example(example, (40, 40), sample_rng(3, 0, i), random_crop=True).crop_top_left for i in range(12)}
    assert len(offsets) > 3


def test_mismatched_inputs_and_bad_sizes_are_refused():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(InputError, match="'k'.*does not match"):
        fit_example(Example("k", image, "c", inputs=[np.zeros((10, 12, 3), np.uint8)]), (8, 8), np.random.default_rng(0))
    with pytest.raises(InputError, match="width, height"):
        fit_example(Example("k", image, "c"), (0, 8), np.random.default_rng(0))
