"""`edit` (InstructPix2Pix) and `generate` (text to image) through the API and CLI, on tiny offline models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("diffusers")

import canvaslab  # noqa: E402
from canvaslab.core.image import load_image  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402
from conftest import write_png  # noqa: E402


@pytest.fixture(scope="module")
def odd(photo):
    """A 70x45 crop: not a multiple of 8, so alignment and exact restore are exercised."""
    return np.ascontiguousarray(photo[10:55, 30:100])


def edit(image, folder, **params):
    return canvaslab.edit(image, **{"instruction": "make it winter", "model": str(folder), "steps": 2, "seed": 1, **params})


def generate(folder, **params):
    return canvaslab.generate(**{"prompt": "a lighthouse", "model": str(folder), "steps": 2, "seed": 1, **params})


# -- edit --------------------------------------------------------------------------------------


def test_edit_restores_the_exact_size_and_records_the_instruction(odd, tiny_folders):
    result = edit(odd, tiny_folders["sd-pix2pix"])
    assert result.image.shape == odd.shape and result.mask.all()
    assert np.abs(result.image.astype(int) - odd.astype(int)).mean() > 1
    assert result.parameters.startswith("make it winter\n")
    assert "Image CFG scale: 1.5" in result.parameters and "Denoising strength" not in result.parameters
    assert result.recipe["task"] == "edit" and result.recipe["request"]["prompt"] == "make it winter"


def test_edit_pad_mode_also_restores_the_size(odd, tiny_folders):
    assert edit(odd, tiny_folders["sd-pix2pix"], align="pad").image.shape == odd.shape


def test_edit_same_seed_same_pixels_and_image_guidance_matters(odd, tiny_folders):
    folder = tiny_folders["sd-pix2pix"]
    a, b = edit(odd, folder), edit(odd, folder)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, edit(odd, folder, image_guidance_scale=3.0).image)


@pytest.mark.parametrize("kind", ["sd-inpaint", "sd-txt2img"])
def test_edit_with_a_model_made_for_another_task_is_a_one_line_error(odd, tiny_folders, kind):
    with pytest.raises(InputError, match="cannot run task 'edit'") as info:
        edit(odd, tiny_folders[kind])
    assert "\n" not in str(info.value)


def test_fields_edit_does_not_read_are_refused_not_ignored(odd, tiny_folders):
    with pytest.raises(InputError, match="--feather does not apply to edit"):
        edit(odd, tiny_folders["sd-pix2pix"], feather=4)
    with pytest.raises(InputError, match="edit needs an instruction"):
        canvaslab.edit(odd, model=str(tiny_folders["sd-pix2pix"]))


# -- generate ----------------------------------------------------------------------------------


def test_generate_size_as_asked_and_native_by_default(tiny_folders):
    folder = tiny_folders["sd-txt2img"]
    assert generate(folder, width=72, height=48).image.shape == (48, 72, 3)
    native = generate(folder)
    assert native.image.shape == (64, 64, 3)  # the tiny model's native resolution
    assert native.recipe["request"]["width"] == 64 and "Size: 64x64" in native.parameters
    assert generate(folder, size=32).image.shape == (32, 32, 3)


def test_generate_same_seed_same_pixels_next_seed_differs(tiny_folders):
    folder = tiny_folders["sd-txt2img"]
    a, b, c = generate(folder, seed=5), generate(folder, seed=5), generate(folder, seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_generate_width_not_a_multiple_of_8_is_a_one_line_error(tiny_folders):
    with pytest.raises(InputError, match=r"invalid width=100: .*multiple of 8.*96 or 104") as info:
        generate(tiny_folders["sd-txt2img"], width=100)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="--strength does not apply to generate"):
        generate(tiny_folders["sd-txt2img"], strength=0.5)


def test_generate_with_sdxl(tiny_folders):
    result = generate(tiny_folders["sdxl-txt2img"], width=64, height=48, scheduler="euler-a")
    assert result.image.shape == (48, 64, 3) and "Sampler: Euler a" in result.parameters


def test_generate_with_an_edit_model_is_a_one_line_error(tiny_folders):
    with pytest.raises(InputError, match="cannot run task 'txt2img'"):
        generate(tiny_folders["sd-pix2pix"], size=32)


# -- CLI ---------------------------------------------------------------------------------------


def cli(*args):
    """`python -m canvaslab ...` in a fresh process (each one imports torch: a few seconds)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def run_cli(*args):
    """The same app in this process, where torch and the tiny models are already loaded."""
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_cli_generate_rows_grid_json_info_and_replay(tmp_path, tiny_folders):
    out, grid = tmp_path / "gen.png", tmp_path / "grid.png"
    done = cli("generate", "--prompt", "a lighthouse", "--model", tiny_folders["sd-txt2img"], "--steps", 2,
               "--width", 48, "--height", 32, "--seed", 3, "--rows", 2, "--grid", grid, "-o", out)
    assert done.returncode == 0, done.stderr
    second = tmp_path / "gen-seed4.png"
    assert out.is_file() and second.is_file()
    assert load_image(grid).size == (48, 32 * 2 + 8)  # one column, two seed rows, 8 px apart
    assert not np.array_equal(load_image(out).rgb, load_image(second).rgb)
    meta = json.loads(run_cli("--json", "info", out).stdout)
    assert meta["recipe"]["task"] == "generate" and meta["recipe"]["request"]["seed"] == 3
    replay = run_cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.exit_code == 0, replay.output


def test_cli_generate_width_100_exits_2_in_one_line(tmp_path, tiny_folders):
    done = cli("generate", "--prompt", "x", "--model", tiny_folders["sd-txt2img"], "--width", 100, "-o", tmp_path / "o.png")
    assert done.returncode == 2 and "width=100" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_edit_json_info_and_replay(tmp_path, odd, tiny_folders):
    src, out = write_png(tmp_path / "in.png", odd), tmp_path / "edited.png"
    done = run_cli("edit", src, "--instruction", "make it winter", "--model", tiny_folders["sd-pix2pix"], "--steps", 2,
                   "--image-guidance-scale", 2, "--seed", 4, "-o", out)
    assert done.exit_code == 0, done.output
    assert load_image(out).size == (odd.shape[1], odd.shape[0])
    meta = json.loads(run_cli("--json", "info", out).stdout)
    assert meta["recipe"]["task"] == "edit" and meta["parameters"].startswith("make it winter\n")
    assert meta["recipe"]["request"]["image_guidance_scale"] == 2
    replay = run_cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.exit_code == 0, replay.output


def test_cli_missing_model_exits_3(tmp_path):
    done = cli("generate", "--prompt", "x", "--model", "sdxl", "--cache-dir", tmp_path / "empty", "-o", tmp_path / "o.png")
    assert done.returncode == 3 and "sdxl" in done.stderr and "Traceback" not in done.stderr


def test_help_stays_light():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from canvaslab.cli.main import app\n"
        "for args in (['edit', '--help'], ['generate', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_cli_edit_over_a_folder_keeps_sizes_and_resumes(tmp_path, odd, tiny_folders):
    for name in ("a", "sub/b"):
        write_png(tmp_path / "imgs" / f"{name}.png", odd)
    args = ["--json", "edit", "--images", tmp_path / "imgs", "--out", tmp_path / "out", "--instruction", "winter",
            "--model", tiny_folders["sd-pix2pix"], "--steps", 2, "--seed", 3]
    first = run_cli(*args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["done"] == 2
    for name in ("a", "sub/b"):
        assert load_image(tmp_path / "out" / f"{name}.png").rgb.shape == odd.shape
    again = run_cli(*args)
    assert json.loads(again.stdout)["skipped_existing"] == 2
