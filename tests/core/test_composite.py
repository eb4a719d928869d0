import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from canvaslab.core.composite import composite


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 40), st.integers(2, 40), st.floats(0, 12), st.integers(0, 2**31 - 1))
def test_pixels_outside_the_mask_never_change(h, w, feather, seed):
    rng = np.random.default_rng(seed)
    original = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.random((h, w)) < 0.4
    out = composite(original, generated, mask, feather)
    assert out.dtype == np.uint8 and out.shape == original.shape
    np.testing.assert_array_equal(out[~mask], original[~mask])
    if feather == 0:
        np.testing.assert_array_equal(out[mask], generated[mask])


def test_feather_blends_near_the_edge_only():
    original = np.zeros((30, 30, 3), np.uint8)
    generated = np.full((30, 30, 3), 200, np.uint8)
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    out = composite(original, generated, mask, 4)
    assert out[15, 15, 0] == 200
    assert 0 < out[5, 15, 0] < 200
