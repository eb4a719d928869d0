"""PatchMatch with wrap-around (`wrap=`, what --tiling asks of the patchmatch engine): the image is a torus
along the wrapped axes, so a fill continues across the edges and copies texture from the other side.

Without wrap-around nothing changes: tests/engines/test_patchmatch.py's golden fills pin those bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from canvaslab.core.seams import seam_report
from canvaslab.engines.classical.patchmatch import patchmatch_inpaint
from canvaslab.errors import InputError


def _torus_texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A texture that tiles exactly: noise blurred on the torus plus diagonal stripes of whole periods."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(h, w, 3)), sigma=(3, 3, 0), mode="wrap")
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = np.sin(2 * np.pi * (3 * xx / w + 2 * yy / h))[..., None]
    img = 128 + 60 * noise / noise.std() + 40 * stripes
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _edge_band(h: int, w: int, axis: str, width: int = 10) -> np.ndarray:
    """A hole over both sides of one wrap-around seam: the first and last `width` columns (x) or rows (y)."""
    hole = np.zeros((h, w), bool)
    if axis == "x":
        hole[:, :width] = hole[:, -width:] = True
    else:
        hole[:width] = hole[-width:] = True
    return hole


def test_the_texture_fixture_tiles_exactly():
    report = seam_report(_torus_texture(64, 96))
    assert report.seamless and all(seam.score < 1 for seam in report.axes.values())


@pytest.mark.parametrize("axis", ["x", "y"])
def test_a_fill_over_a_seam_continues_across_it_only_with_wrap_around(axis):
    img = _torus_texture(72, 96)
    hole = _edge_band(72, 96, axis)
    wrapped = patchmatch_inpaint(img, hole, seed=0, wrap=axis)
    plain = patchmatch_inpaint(img, hole, seed=0)
    seam_wrapped = seam_report(wrapped, axis).axes[axis]
    seam_plain = seam_report(plain, axis).axes[axis]
    # On the torus the hole has known texture on both sides and the fill joins them; without
    # wrap-around each side is filled on its own and they meet as a step at the seam.
    assert seam_wrapped.seamless and seam_wrapped.ratio < 1.2, seam_wrapped  # measured 0.84-1.02 over seeds
    assert not seam_plain.seamless and seam_plain.ratio > 3 * seam_wrapped.ratio, (seam_plain, seam_wrapped)
    np.testing.assert_array_equal(wrapped[~hole], img[~hole])


def test_wrap_along_one_axis_leaves_the_other_edge_alone():
    img = _torus_texture(72, 96)
    hole = _edge_band(72, 96, "y")
    along_x = patchmatch_inpaint(img, hole, seed=0, wrap="x")
    along_y = patchmatch_inpaint(img, hole, seed=0, wrap="y")
    wrapped, unwrapped = seam_report(along_y, "y").axes["y"], seam_report(along_x, "y").axes["y"]
    assert wrapped.seamless and not unwrapped.seamless
    assert unwrapped.ratio > 3 * wrapped.ratio, (unwrapped, wrapped)


def test_a_hole_over_the_corner_is_filled_on_the_torus():
    img = _torus_texture(64, 80)
    hole = np.zeros((64, 80), bool)
    hole[:9, :9] = hole[:9, -9:] = hole[-9:, :9] = hole[-9:, -9:] = True  # one 18x18 hole on the torus
    out = patchmatch_inpaint(img, hole, seed=2, wrap="both")
    np.testing.assert_array_equal(out[~hole], img[~hole])
    assert seam_report(out).seamless


def test_texture_is_copied_from_across_the_edge():
    # The only texture like the hole's surroundings is on the far side of the seam: with wrap-around,
    # sources straddling the edge exist and the fill takes them; the error to the truth stays small.
    img = _torus_texture(64, 96, seed=3)
    hole = np.zeros((64, 96), bool)
    hole[20:44, :12] = True
    out = patchmatch_inpaint(img, hole, seed=0, wrap="x")
    plain = patchmatch_inpaint(img, hole, seed=0)
    truth_error = np.abs(out[hole].astype(int) - img[hole]).mean()
    plain_error = np.abs(plain[hole].astype(int) - img[hole]).mean()
    assert truth_error < plain_error, (truth_error, plain_error)


def test_same_seed_same_bytes_whatever_the_thread_count():
    img = _torus_texture(96, 128, seed=1)
    hole = _edge_band(96, 128, "x", width=14) | _edge_band(96, 128, "y", width=8)
    one = patchmatch_inpaint(img, hole, seed=5, wrap="both", threads=1)
    three = patchmatch_inpaint(img, hole, seed=5, wrap="both", threads=3)
    again = patchmatch_inpaint(img, hole, seed=5, wrap="both", threads=1)
    other = patchmatch_inpaint(img, hole, seed=6, wrap="both", threads=1)
    assert one.tobytes() == three.tobytes() == again.tobytes()
    assert one.tobytes() != other.tobytes()


def test_wrap_none_is_the_plain_fill():
    img = _torus_texture(64, 64)
    hole = np.zeros((64, 64), bool)
    hole[20:40, 24:44] = True
    assert patchmatch_inpaint(img, hole, seed=1, wrap="none").tobytes() == patchmatch_inpaint(img, hole, seed=1).tobytes()


def test_an_unknown_wrap_is_one_clear_error():
    img = _torus_texture(32, 32)
    with pytest.raises(InputError, match="wrap must be one of none, x, y, both, got 'xy'"):
        patchmatch_inpaint(img, np.eye(32, dtype=bool), wrap="xy")
