"""`canvaslab texture seamless` / `texture check` and `canvaslab.texture_seamless`: an image made to tile.

The criterion of issue 11: on a real photo the output's wrap-around seam is no louder than the interior's
typical line (core.seams ratio <= 1), while the input's is many times louder; pixels outside the band are
the input's; a seed gives the same bytes; the output carries its recipe and replays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import canvaslab
from canvaslab.core.image import load_image
from canvaslab.core.metadata import read_metadata
from canvaslab.core.seams import seam_report
from canvaslab.errors import InputError
from canvaslab.tasks.texture import default_band, seam_band
from conftest import EXAMPLES, write_png


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    """examples/chelsea.png at half size (225x150: odd width, so the roll by half is not symmetric)."""
    image = Image.open(EXAMPLES / "chelsea.png").convert("RGB")
    return np.asarray(image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)).copy()


@pytest.fixture(scope="module")
def made_seamless(cat):
    return canvaslab.texture_seamless(cat, seed=0)


def _edge_frame(shape: tuple[int, int], band: int, *, x: bool = True, y: bool = True) -> np.ndarray:
    """`band` px on each side of the wrap-around seams: where the band lands after the roll back."""
    frame = np.zeros(shape, bool)
    if x:
        frame[:, :band] = frame[:, -band:] = True
    if y:
        frame[:band] = frame[-band:] = True
    return frame


def test_a_photo_made_seamless_has_seams_no_louder_than_its_interior(cat, made_seamless):
    before, after = seam_report(cat), seam_report(made_seamless.image)
    for axis in ("x", "y"):
        assert before.axes[axis].ratio > 4 and not before.axes[axis].seamless, before.axes[axis]
        assert after.axes[axis].ratio <= 1.0 and after.axes[axis].seamless, after.axes[axis]  # measured 0.54-0.88


def test_only_the_band_over_the_seams_changes(cat, made_seamless):
    band = default_band((cat.shape[1], cat.shape[0]))
    assert band == 19 and made_seamless.recipe["request"]["band"] == band  # 150 / 8, recorded for replay
    frame = _edge_frame(cat.shape[:2], band)
    np.testing.assert_array_equal(made_seamless.mask, frame)
    np.testing.assert_array_equal(made_seamless.image[~frame], cat[~frame])
    assert made_seamless.image.shape == cat.shape
    assert np.abs(made_seamless.image[frame].astype(int) - cat[frame]).mean() > 5


def test_same_seed_same_bytes_other_seed_other_fill(cat, made_seamless):
    again = canvaslab.texture_seamless(cat, seed=0)
    other = canvaslab.texture_seamless(cat, seed=1)
    assert again.image.tobytes() == made_seamless.image.tobytes()
    assert other.image.tobytes() != made_seamless.image.tobytes()


def test_one_axis_leaves_the_other_seam_alone(cat):
    result = canvaslab.texture_seamless(cat, axes="x", band=12, seed=0)
    frame = _edge_frame(cat.shape[:2], 12, y=False)
    np.testing.assert_array_equal(result.mask, frame)
    np.testing.assert_array_equal(result.image[~frame], cat[~frame])
    assert seam_report(result.image, "x").seamless
    assert not seam_report(result.image, "y").seamless  # the top and bottom rows are the input's
    assert "Tiling: x" in result.parameters and "Texture band: 12" in result.parameters


@pytest.mark.parametrize("engine", ["telea", "ns"])
def test_engines_that_cannot_wrap_fill_in_two_passes(cat, engine):
    result = canvaslab.texture_seamless(cat, engine=engine, seed=0)
    frame = _edge_frame(cat.shape[:2], default_band((cat.shape[1], cat.shape[0])))
    np.testing.assert_array_equal(result.image[~frame], cat[~frame])
    assert seam_report(result.image).axes["x"].ratio < seam_report(cat).axes["x"].ratio / 2
    # The vertical band's two ends (the rolled image's top and bottom rows) meet again between rows 74
    # and 75, inside the band at the left and right edges. Filled in one pass they would not see each
    # other (a step of 6.5 telea, 4.4 ns); the second pass fills them with both sides in view (0.6, 1.4).
    band = default_band((cat.shape[1], cat.shape[0]))
    columns = np.r_[0:band, cat.shape[1] - band:cat.shape[1]]
    step = np.abs(result.image[75, columns].astype(int) - result.image[74, columns].astype(int)).mean()
    assert step < 3, step


def test_alpha_is_the_inputs(cat):
    alpha = np.full(cat.shape[:2], 200, np.uint8)
    alpha[:, :30] = 0
    result = canvaslab.texture_seamless(np.dstack([cat, alpha]), seed=0, band=10)
    np.testing.assert_array_equal(result.alpha, alpha)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"band": 60}, "--band 60 is too wide for an image 150 px high: at most 37"),
        ({"axes": "none"}, "texture seamless needs an axis to make seamless: x, y or both"),
        ({"tiling": "both"}, "texture seamless makes the image tile along --axes itself: leave --tiling out"),
        ({"tile": 64}, "texture seamless fills the band over the whole image in one go: leave --tile out"),
        ({"engine": "telea", "prompt": "moss"}, "--prompt does not apply to the telea engine"),
    ],
)
def test_bad_requests_are_one_line(cat, params, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        canvaslab.texture_seamless(cat, **params)


def test_seam_band_is_centred_on_the_rolled_seams():
    hole = seam_band((10, 12), (5, 6), 2, wrap_x=True, wrap_y=False)
    assert hole[:, 4:8].all() and not hole[:, :4].any() and not hole[:, 8:].any()


# -- CLI -----------------------------------------------------------------------------------------


def _cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_cli_seamless_writes_the_recipe_replays_and_check_reports(tmp_path, cat):
    image = write_png(tmp_path / "cat.png", cat)
    made = _cli("texture", "seamless", image, "--seed", "4", "--band", "16", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    output = tmp_path / "cat-seamless.png"
    assert made.stdout.strip() == "cat-seamless.png" and "x seam: " in made.stderr
    recipe = read_metadata(output).recipe
    assert recipe["task"] == "texture" and recipe["request"]["band"] == 16 and recipe["request"]["axes"] == "both"
    replay = _cli("replay", output, "--check", cwd=tmp_path)
    assert replay.returncode == 0 and "identical pixels" in replay.stderr, replay.stderr

    checked = _cli("--json", "texture", "check", output, cwd=tmp_path)
    report = json.loads(checked.stdout)
    assert report["seamless"] is True and set(report["axes"]) == {"x", "y"}
    assert report["axes"]["x"]["ratio"] <= 1.0
    assert _cli("texture", "check", output, "--strict", cwd=tmp_path).returncode == 0
    strict = _cli("texture", "check", image, "--strict", "--axes", "y", cwd=tmp_path)
    assert strict.returncode == 1 and "SEAM" in strict.stdout and strict.stdout.count("\n") == 2


def test_cli_bad_input_is_one_line(tmp_path, cat):
    image = write_png(tmp_path / "cat.png", cat)
    wide = _cli("texture", "seamless", image, "--band", "60", cwd=tmp_path)
    assert wide.returncode == 2
    assert wide.stderr.strip().splitlines() == [
        "error: --band 60 is too wide for an image 150 px high: at most 37 (the band covers 2 x band px around each seam)"
    ]
    assert not (tmp_path / "cat-seamless.png").exists()
    assert load_image(image).rgb.shape == cat.shape
