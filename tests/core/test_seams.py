"""core.seams: the wrap-around seam of an image measured against the lines of its interior."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from canvaslab.core.seams import OUTLIER_SCORE, line_errors, seam_report
from canvaslab.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / "chelsea.png").convert("RGB"))


def _cyclic_lines(image: np.ndarray, axis: str) -> np.ndarray:
    steps, wrap = line_errors(image, axis)
    return np.append(steps, wrap)  # line i joins pixel i and i + 1; the last one joins the last and the first


@pytest.mark.parametrize("axis", ["x", "y"])
def test_rolling_an_image_only_moves_which_line_is_the_seam(cat, axis):
    shift = (0, 100) if axis == "x" else (70, 0)
    rolled = np.roll(cat, shift, axis=(0, 1))
    lines, lines_rolled = _cyclic_lines(cat, axis), _cyclic_lines(rolled, axis)
    np.testing.assert_allclose(np.roll(lines, max(shift)), lines_rolled)


def test_a_periodic_image_has_a_seam_exactly_like_its_interior_lines():
    block = np.random.default_rng(0).integers(0, 256, (24, 8, 3), dtype=np.uint8)
    tiled = np.tile(block, (1, 5, 1))  # period 8 along x: the seam joins column 7 to column 0 again
    steps, wrap = line_errors(tiled, "x")
    assert wrap == steps[7] == steps[15]
    assert seam_report(tiled, "x").seamless


def test_a_photo_shows_its_seams(cat):
    report = seam_report(cat)
    assert not report.seamless
    for seam in report.axes.values():
        assert seam.ratio > 4 and seam.score > OUTLIER_SCORE and seam.rank == 1.0


def test_the_verdict_is_not_fooled_by_a_seam_a_little_above_the_median():
    # A perfect tile's seam is just one of its lines: louder than the median half the time. It is
    # seamless as long as it does not stand out from the spread of the lines.
    rng = np.random.default_rng(1)
    noisy = rng.normal(128, 20, (64, 64, 3))
    report = seam_report(np.clip(noisy, 0, 255), "x")
    seam = report.axes["x"]
    assert seam.score <= OUTLIER_SCORE and report.seamless
    assert seam.spread > 0


def test_flat_images_and_steps_on_a_flat_interior():
    flat = np.full((16, 16), 100, np.uint8)
    seam = seam_report(flat, "x").axes["x"]
    assert (seam.seam, seam.ratio, seam.score) == (0.0, 0.0, 0.0) and seam.seamless
    step = flat.copy()
    step[:, -1] = 140  # the only change is at the wrap
    seam = seam_report(step, "x").axes["x"]
    assert seam.ratio == float("inf") and not seam.seamless


def test_report_as_json_and_as_lines(cat):
    report = seam_report(cat, "y")
    data = report.as_dict()
    assert data["width"] == cat.shape[1] and data["height"] == cat.shape[0] and data["seamless"] is False
    assert set(data["axes"]) == {"y"}
    assert set(data["axes"]["y"]) == {"axis", "seam", "interior", "spread", "ratio", "score", "rank", "seamless"}
    [line] = report.lines()
    assert line.startswith("y (bottom edge -> top edge): seam ") and line.endswith("SEAM")


@pytest.mark.parametrize(
    ("image", "axes", "message"),
    [
        (np.zeros((8, 2, 3), np.uint8), "x", "a seam needs at least 3 pixels along x, got 2"),
        (np.zeros((8, 8, 3), np.uint8), ("x", "z"), "axes must be some of x, y"),
        (np.zeros((8, 8, 3), np.uint8), (), "axes must be some of x, y"),
        (np.zeros((2, 8, 8, 3), np.uint8), "x", "expected an HxW or HxWxC image"),
    ],
)
def test_bad_input_is_one_clear_error(image, axes, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        seam_report(image, axes)
