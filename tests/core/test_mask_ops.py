import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvaslab.core.mask import as_mask, bounding_box, coverage, feather, grow, squared_distance_to
from canvaslab.errors import InputError


def brute_distance(region: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(region)
    gy, gx = np.mgrid[: region.shape[0], : region.shape[1]]
    d = (gy[..., None] - ys) ** 2 + (gx[..., None] - xs) ** 2
    return d.min(axis=-1).astype(float)


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 20), st.integers(4, 20), st.integers(0, 2**31 - 1))
def test_bounded_distance_matches_brute_force(h, w, seed):
    rng = np.random.default_rng(seed)
    region = rng.random((h, w)) < 0.1
    region[rng.integers(h), rng.integers(w)] = True
    radius = 5
    got = squared_distance_to(region, radius)
    want = brute_distance(region)
    near = want <= radius * radius
    np.testing.assert_array_equal(got[near], want[near])
    assert np.all(got[~near] > radius * radius)


def test_grow_is_a_disk():
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    grown = grow(mask, 3)
    yy, xx = np.mgrid[:21, :21]
    np.testing.assert_array_equal(grown, (yy - 10) ** 2 + (xx - 10) ** 2 <= 9)
    assert grow(mask, 0).sum() == 1


def test_grow_rejects_negative():
    with pytest.raises(InputError, match="grow must be >= 0"):
        grow(np.zeros((4, 4), bool), -1)


def test_feather_stays_inside_the_mask_and_ramps():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    weights = feather(mask, 5)
    assert weights.dtype == np.float32
    assert np.all(weights[~mask] == 0)
    assert weights[20, 20] == 1.0
    assert 0 < weights[10, 20] < weights[12, 20] < weights[14, 20] <= 1.0
    np.testing.assert_array_equal(feather(mask, 0), mask.astype(np.float32))


def test_bounding_box_and_coverage():
    mask = np.zeros((10, 12), bool)
    assert bounding_box(mask) is None
    mask[2:5, 3:9] = True
    assert bounding_box(mask) == (3, 2, 9, 5)
    assert coverage(mask) == pytest.approx(18 / 120)


def test_as_mask_checks_shape_and_dtype():
    with pytest.raises(InputError, match="boolean"):
        as_mask(np.zeros((3, 3), np.uint8))
    with pytest.raises(InputError, match="2-D"):
        as_mask(np.zeros((3, 3, 1), bool))
    with pytest.raises(InputError, match="but the image is"):
        as_mask(np.zeros((3, 3), bool), shape=(4, 3))
