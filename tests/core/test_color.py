"""Behaviour of colour matching: casts are removed, nothing outside the region ever changes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage import data

from canvaslab.core.color import METHODS, match_colors, ring_around
from canvaslab.errors import InputError

CAST = np.array([40, -25, 15])


def disk(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def with_cast(image: np.ndarray, region: np.ndarray, cast=CAST) -> np.ndarray:
    out = image.copy()
    out[region] = np.clip(image[region].astype(int) + cast, 0, 255).astype(np.uint8)
    return out


def stationary_texture(height: int, width: int, seed: int) -> np.ndarray:
    """Noise around one colour everywhere, so the surroundings are a fair reference for any hole."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal((120, 90, 70), 12, (height, width, 3)), 0, 255).astype(np.uint8)


def mean_color_error(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    return float(np.abs(a[region].mean(axis=0) - b[region].astype(float).mean(axis=0)).mean())


def cdf(values: np.ndarray) -> np.ndarray:
    return np.cumsum(np.bincount(values, minlength=256)) / values.size


def mean_abs_error(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    return float(np.abs(a[region].astype(float) - b[region].astype(float)).mean())


# --------------------------------------------------------------------------------------------------
# Correction


def test_cast_on_a_photo_is_removed_given_the_true_colours():
    truth = data.chelsea()
    region = disk(truth.shape[:2], (150, 220), 50)
    filled = with_cast(truth, region)
    fixed = match_colors(filled, region, reference=truth[region])
    assert mean_abs_error(fixed, truth, region) < mean_abs_error(filled, truth, region) / 5
    assert mean_color_error(fixed, truth, region) < mean_color_error(filled, truth, region) / 5


@pytest.mark.parametrize("method", METHODS)
def test_cast_on_a_stationary_texture_is_removed_from_the_surroundings(method):
    truth = stationary_texture(160, 200, seed=1)
    region = disk(truth.shape[:2], (80, 100), 35)
    filled = with_cast(truth, region)
    fixed = match_colors(filled, region, method=method)
    before = mean_color_error(filled, truth, region)
    assert mean_color_error(fixed, truth, region) < before / 5


def test_contrast_is_matched_too():
    truth = stationary_texture(120, 120, seed=2)
    region = disk(truth.shape[:2], (60, 60), 30)
    washed = truth.copy()
    washed[region] = (128 + (truth[region].astype(float) - 128) * 0.4).astype(np.uint8)  # low contrast fill
    fixed = match_colors(washed, region)
    ring = ring_around(region, 32)
    target_std = truth[ring].astype(float).std(axis=0)
    assert np.allclose(fixed[region].astype(float).std(axis=0), target_std, rtol=0.1)


def test_histogram_method_matches_the_reference_histogram():
    rng = np.random.default_rng(3)
    height, width = 128, 128
    image = rng.uniform(0, 255, (height, width, 3)).astype(np.uint8)  # flat histogram outside
    region = np.zeros((height, width), bool)
    region[32:96, 32:96] = True
    image[region] = np.clip(rng.normal(60, 15, (region.sum(), 3)), 0, 255).astype(np.uint8)
    fixed = match_colors(image, region, method="histogram", ring=None)
    for channel in range(3):
        want = cdf(image[~region][:, channel])
        before = np.abs(cdf(image[region][:, channel]) - want).max()
        after = np.abs(cdf(fixed[region][:, channel]) - want).max()
        # A value's pixels all map to one value, so the CDFs can differ by one source bin (~3% here).
        assert after < 0.04 and after < before / 10


def test_ring_reference_follows_the_surroundings_not_the_whole_image():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 100:] = 200  # dark left half, bright right half
    region = disk(image.shape[:2], (50, 150), 20)
    image[region] = (180, 220, 200)  # a slightly off fill on the bright side
    near = match_colors(image, region, ring=10)
    everywhere = match_colors(image, region, ring=None)
    np.testing.assert_allclose(near[region].mean(axis=0), 200, atol=1)
    np.testing.assert_allclose(everywhere[region].mean(axis=0), image[~region].mean(axis=0), atol=1)


def test_reference_mask_chooses_pixels_and_skips_the_region():
    image = np.full((20, 20, 3), 50, np.uint8)
    image[:, 10:] = 150
    region = np.zeros((20, 20), bool)
    region[8:12, 12:16] = True
    image[region] = 10
    reference = np.zeros((20, 20), bool)
    reference[:, :10] = True
    reference[region] = True  # ignored: the region's own pixels are what is being corrected
    fixed = match_colors(image, region, reference=reference)
    assert np.all(fixed[region] == 50)


# --------------------------------------------------------------------------------------------------
# Identity guarantees


def test_outside_region_is_bit_identical_and_input_untouched():
    truth = data.chelsea()
    region = disk(truth.shape[:2], (100, 100), 40)
    filled = with_cast(truth, region)
    before = filled.copy()
    for method in METHODS:
        fixed = match_colors(filled, region, method=method)
        assert fixed.dtype == np.uint8 and fixed.shape == filled.shape
        assert fixed[~region].tobytes() == filled[~region].tobytes()
        assert not np.array_equal(fixed[region], filled[region])
    np.testing.assert_array_equal(filled, before)


@pytest.mark.parametrize("method", METHODS)
def test_strength_zero_is_identity_and_half_is_halfway(method):
    truth = stationary_texture(80, 80, seed=4)
    region = disk(truth.shape[:2], (40, 40), 20)
    filled = with_cast(truth, region)
    assert match_colors(filled, region, method=method, strength=0.0).tobytes() == filled.tobytes()
    full = match_colors(filled, region, method=method).astype(float)
    half = match_colors(filled, region, method=method, strength=0.5).astype(float)
    expected = (filled[region].astype(float) + full[region]) / 2
    assert np.abs(half[region] - expected).max() <= 1.0


def test_empty_region_returns_a_copy():
    image = stationary_texture(10, 10, seed=5)
    out = match_colors(image, np.zeros((10, 10), bool))
    assert out is not image and out.tobytes() == image.tobytes()


def test_alpha_channel_is_left_alone():
    rgb = stationary_texture(40, 40, seed=6)
    region = disk((40, 40), (20, 20), 10)
    rgba = np.dstack([with_cast(rgb, region), np.arange(1600, dtype=np.uint8).reshape(40, 40)])
    out = match_colors(rgba, region)
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    assert not np.array_equal(out[region, :3], rgba[region, :3])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(2, 24),
    width=st.integers(2, 24),
    fraction=st.floats(0.01, 0.95),
    method=st.sampled_from(METHODS),
    strength=st.floats(0.0, 1.0),
    ring=st.one_of(st.none(), st.integers(1, 10)),
)
def test_property_outside_region_untouched(seed, height, width, fraction, method, strength, ring):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    region = rng.random((height, width)) < fraction
    region[0, 0] = False  # keep at least one reference pixel
    out = match_colors(image, region, method=method, strength=strength, ring=ring)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[~region].tobytes() == image[~region].tobytes()


# --------------------------------------------------------------------------------------------------
# Ring and validation


def test_ring_around_a_rectangle():
    region = np.zeros((50, 60), bool)
    region[20:30, 25:35] = True
    ring = ring_around(region, 3)
    assert ring.sum() == 16 * 16 - 10 * 10
    assert not np.any(ring & region)
    assert ring[17, 22] and not ring[16, 22]
    corner = np.zeros((10, 10), bool)
    corner[0, 0] = True
    assert ring_around(corner, 2).sum() == 3 * 3 - 1  # clipped at the image edge


def test_errors():
    image = stationary_texture(10, 10, seed=7)
    region = np.zeros((10, 10), bool)
    region[2:5, 2:5] = True
    with pytest.raises(InputError, match="whole image"):
        match_colors(image, np.ones((10, 10), bool))
    with pytest.raises(InputError, match="mean-std, histogram") as info:
        match_colors(image, region, method="lab")
    assert "'lab'" in str(info.value)
    with pytest.raises(InputError, match="strength"):
        match_colors(image, region, strength=1.5)
    with pytest.raises(InputError, match="region"):
        match_colors(image, region[:5])
    with pytest.raises(InputError, match="region"):
        match_colors(image, region.astype(np.uint8))
    with pytest.raises(InputError, match="image"):
        match_colors(image.astype(np.float32), region)
    with pytest.raises(InputError, match="reference"):
        match_colors(image, region, reference=region)  # only region pixels: nothing to match to
    with pytest.raises(InputError, match="ring"):
        match_colors(image, region, ring=0)
