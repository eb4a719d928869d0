"""Outpainting with the unified engine: every direction, any mix, one prompt per step, the window offset.

The tiny model's native window is 64 px (4x4 tokens), so most canvases here need several windows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tokenizers")

import canvaslab  # noqa: E402
from canvaslab.core.canvas import parse_sequence, plan_sequence  # noqa: E402
from canvaslab.core.image import load_image  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402
from conftest import write_png  # noqa: E402


@pytest.fixture(scope="module")
def folder(bundle_folder):
    return bundle_folder


@pytest.fixture(scope="module")
def picture(photo):
    """64x48 px of a real photo: the extended canvases are not multiples of 16 everywhere."""
    return np.ascontiguousarray(photo[20:68, 40:104])


def outpaint(image, folder, **params):
    params = {"engine": "unified", "model": str(folder), "sampling_steps": 3, "seed": 1, "guidance_scale": 1.5,
              "overlap": 0, "feather": 0, **params}
    return canvaslab.outpaint(image, **params)


def original_at(result, picture, top, left):
    h, w = picture.shape[:2]
    return result.image[top : top + h, left : left + w]


# Where the input ends up for each set of sides extended by half its size (64x48 -> +32 px / +24 px).
PLACES = {
    "left": ((48, 96), (0, 32)),
    "right": ((48, 96), (0, 0)),
    "up": ((72, 64), (24, 0)),
    "down": ((72, 64), (0, 0)),
    "left,up": ((72, 96), (24, 32)),
    "right,down": ((72, 96), (0, 0)),
    "left,right,up,down": ((96, 128), (24, 32)),
}


@pytest.mark.parametrize("sides", list(PLACES))
def test_every_direction_and_mix_gives_the_canvas_and_keeps_the_input(picture, folder, sides):
    (height, width), (top, left) = PLACES[sides]
    result = outpaint(picture, folder, expand=0.5, direction=sides, prompt="a beach")
    assert result.image.shape == (height, width, 3)
    np.testing.assert_array_equal(original_at(result, picture, top, left), picture)
    new = result.mask.copy()
    assert new.sum() == height * width - picture.shape[0] * picture.shape[1]
    edge = np.pad(picture, ((top, height - 48 - top), (left, width - 64 - left), (0, 0)), mode="edge")
    assert np.abs(result.image[new].astype(int) - edge[new]).mean() > 2  # the engine painted the new area


@pytest.mark.parametrize("sequence, size, place", [
    ("left *** up", (72, 96), (24, 32)),
    ("down,right", (72, 96), (0, 0)),
    ("left,left,right", (48, 160), (0, 64)),
    ("up+left *** down+right", (96, 128), (24, 32)),
])
def test_a_sequence_extends_one_side_per_step_in_order(picture, folder, sequence, size, place):
    result = outpaint(picture, folder, expand=0.5, sequence=sequence)
    assert result.image.shape == (*size, 3)
    np.testing.assert_array_equal(original_at(result, picture, *place), picture)
    steps = len(parse_sequence(sequence))
    assert result.recipe["request"]["sequence"] == list(parse_sequence(sequence))
    assert f"Outpaint steps: {steps}" in result.parameters


def test_sequence_planning_adds_equal_strips_of_the_input_size():
    steps = plan_sequence((64, 48), 0.5, parse_sequence("left *** left *** up+right"))
    assert [(s.left, s.right, s.top, s.bottom) for s in steps] == [(32, 0, 0, 0), (32, 0, 0, 0), (0, 32, 24, 0)]
    assert parse_sequence(["down", "left+up"]) == ("bottom", "left+top")


def test_one_prompt_per_step_each_step_painted_from_its_own(picture, folder):
    first = outpaint(picture, folder, expand=0.5, sequence="left,right", prompts=["a red wall", "the sea"])
    other = outpaint(picture, folder, expand=0.5, sequence="left,right", prompts=["a red wall", "a forest"])
    assert first.recipe["request"]["prompts"] == ["a red wall", "the sea"]
    assert "Step prompts: a red wall *** the sea" in first.parameters
    # Step 1 (left) saw the same prompt: identical; step 2 (right) saw another one: different.
    np.testing.assert_array_equal(first.image[:, :32], other.image[:, :32])
    assert not np.array_equal(first.image[:, 96:], other.image[:, 96:])


def test_prompts_split_at_the_reference_separator_and_the_last_is_reused(picture, folder):
    split = outpaint(picture, folder, expand=0.5, sequence="left,up,right", prompts="a wall *** the sea")
    assert split.recipe["request"]["prompts"] == ["a wall", "the sea"]
    explicit = outpaint(picture, folder, expand=0.5, sequence="left,up,right", prompts=["a wall", "the sea", "the sea"])
    np.testing.assert_array_equal(split.image, explicit.image)


def test_prompt_settings_that_conflict_are_refused(picture, folder):
    with pytest.raises(InputError, match="either --prompt .* or --step-prompt"):
        outpaint(picture, folder, expand=0.5, direction="left", prompt="x", prompts=["y"])
    with pytest.raises(InputError, match="3 step prompts for 2 outpaint steps"):
        outpaint(picture, folder, expand=0.5, direction="left", steps=2, prompts=["a", "b", "c"])
    with pytest.raises(InputError, match="--sequence needs --expand"):
        outpaint(picture, folder, sequence="left")
    with pytest.raises(InputError, match="leave --direction and --left"):
        outpaint(picture, folder, expand=0.5, sequence="left", direction="up")
    with pytest.raises(InputError, match="leave --direction and --left"):
        outpaint(picture, folder, expand=0.5, sequence="left", right=16)
    with pytest.raises(InputError, match="unknown direction 'sideways'"):
        outpaint(picture, folder, expand=0.5, sequence="left *** sideways")


def test_sampling_steps_are_separate_from_outpaint_steps(picture, folder):
    result = outpaint(picture, folder, right=32, steps=2, sampling_steps=4)
    assert "Steps: 4" in result.parameters and "Outpaint steps: 2" in result.parameters


def test_offset_moves_the_windows_of_a_strip_deeper_than_one_window(photo, folder):
    """+96 px on the left of a 64 px window is 6 token columns: filled by windows advancing 2 + offset.

    --tile 0 keeps the 160 px canvas in one engine call, so the engine's own token windows fill it."""
    square = np.ascontiguousarray(photo[20:84, 40:104])
    results = {offset: outpaint(square, folder, left=96, tile=0, options={"offset": offset}) for offset in (-1, 0, 1)}
    for offset, result in results.items():
        assert result.image.shape == (64, 160, 3) and not result.notices
        np.testing.assert_array_equal(result.image[:, 96:], square)
        assert result.recipe["request"]["options"] == {"offset": offset}
    assert not np.array_equal(results[0].image, results[1].image)
    assert not np.array_equal(results[0].image, results[-1].image)
    with pytest.raises(InputError, match=r"offset 2 is outside \[-1, 1\]"):
        outpaint(square, folder, left=32, options={"offset": 2})


def test_a_canvas_beyond_twice_the_native_size_is_filled_tile_by_tile(picture, folder):
    result = outpaint(picture, folder, right=128)  # 192 px wide: over 2 x 64, so tasks/tiles.py windows it
    assert result.image.shape == (48, 192, 3)
    np.testing.assert_array_equal(result.image[:, :64], picture)
    prefill = np.repeat(picture[:, -1:], 128, axis=1).astype(int)
    changed = np.abs(result.image[:, 64:].astype(int) - prefill).max(axis=2) > 0
    assert changed.mean() > 0.95  # no window left the pre-fill in place


def test_overlap_band_and_feather_keep_pixels_outside_the_generated_mask(picture, folder):
    result = outpaint(picture, folder, left=32, overlap=8, feather=8, prompt="a wall")
    kept = ~result.mask[:, 32:]
    np.testing.assert_array_equal(result.image[:, 32:][kept], picture[kept])
    assert result.mask[:, 32:40].all()  # the overlap band was regenerated


def run_cli(*args):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_outpaint_sequence_with_step_prompts_and_replay(tmp_path, picture, folder):
    src, out = write_png(tmp_path / "in.png", picture), tmp_path / "out.png"
    done = run_cli("outpaint", src, "--engine", "unified", "--model", folder, "--sequence", "left *** up",
                   "--expand", 0.5, "--step-prompt", "a wall", "--step-prompt", "the sky", "--sampling-steps", 3,
                   "--opt", "offset=1", "--seed", 3, "-o", out)
    assert done.exit_code == 0, done.output
    assert load_image(out).size == (96, 72)
    meta = json.loads(run_cli("--json", "info", out).stdout)
    request = meta["recipe"]["request"]
    assert request["prompts"] == ["a wall", "the sky"] and request["sequence"] == ["left", "top"]
    assert request["options"] == {"offset": 1}
    replay = run_cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.exit_code == 0, replay.output
