"""The `canvaslab` command, run through its real entry point."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, write_png


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture()
def pair(tmp_path, photo, box_mask):
    return write_png(tmp_path / "in put.png", photo), write_png(tmp_path / "mask.png", box_mask)


def test_inpaint_writes_output_with_recipe_and_replays_identically(tmp_path, pair, photo, box_mask):
    image, mask = pair
    out = tmp_path / "out.png"
    run = cli("inpaint", image, "--mask", mask, "--seed", 4, "--grow", 2, "-o", out)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    result = np.asarray(Image.open(out).convert("RGB"))
    assert result.shape == photo.shape
    info = cli("--json", "info", out)
    meta = json.loads(info.stdout)
    assert meta["recipe"]["task"] == "inpaint" and meta["recipe"]["request"]["seed"] == 4
    assert "Seed: 4" in meta["parameters"] and "Mask grow: 2" in meta["parameters"]
    replay = cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.returncode == 0, replay.stderr
    assert "identical pixels" in replay.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png").convert("RGB")), result)


def test_replay_check_fails_when_the_input_changed(tmp_path, pair, photo):
    image, mask = pair
    out = tmp_path / "out.png"
    assert cli("inpaint", image, "--mask", mask, "--seed", 1, "-o", out).returncode == 0
    write_png(image, 255 - photo)
    replay = cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.returncode == 1 and "differ" in replay.stderr


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["inpaint", "missing.png", "--mask", "m.png"], 2, "cannot read image"),
        (["inpaint", "{image}", "--mask", "{mask}", "--engine", "nope"], 2, "unknown engine 'nope'"),
        (["inpaint", "{image}", "--mask", "{mask}", "--grow", "-3"], 2, "grow"),
        (["inpaint", "{image}", "--mask", "{mask}", "--opt", "radius"], 2, "KEY=VALUE"),
        (["inpaint", "{image}", "--mask", "{mask}", "--format", "jpeg", "-o", "x.png"], 2, "does not match"),
        (["inpaint", "{image}"], 2, "needs a mask"),
        (["outpaint", "{image}"], 2, "nothing to outpaint"),
        (["outpaint", "{image}", "--direction", "sideways", "--expand", "0.2"], 2, "unknown direction"),
        (["info", "{image}"], 2, "carries no recipe"),
        (["replay", "{image}"], 2, "no canvaslab recipe"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, pair, args, code, message):
    image, mask = pair
    args = [a.format(image=image, mask=mask) for a in args]
    run = cli(*args, cwd=tmp_path)
    assert run.returncode == code, (run.stdout, run.stderr)
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.startswith("error:")]) == 1


def test_rows_and_grid(tmp_path, pair, photo):
    image, mask = pair
    out, grid = tmp_path / "o.png", tmp_path / "g.png"
    run = cli("inpaint", image, "--mask", mask, "--seed", 10, "--rows", 3, "--grid", grid, "--h-spacing", 4,
              "--v-spacing", 6, "-o", out)
    assert run.returncode == 0, run.stderr
    assert out.exists() and (tmp_path / "o-seed11.png").exists() and (tmp_path / "o-seed12.png").exists()
    h, w = photo.shape[:2]
    assert Image.open(grid).size == (3 * w + 2 * 4, 3 * h + 2 * 6)


def test_outpaint_cli_and_jpeg_recipe(tmp_path, pair, photo):
    image, _ = pair
    out = tmp_path / "wide.jpg"
    run = cli("outpaint", image, "--left", 16, "--right", 24, "--steps", 2, "--engine", "telea", "--seed", 0, "-o", out)
    assert run.returncode == 0, run.stderr
    assert Image.open(out).size == (photo.shape[1] + 40, photo.shape[0])
    meta = json.loads(cli("--json", "info", out).stdout)
    assert meta["recipe"]["task"] == "outpaint" and "Outpaint: left 16 right 24" in meta["parameters"]


def test_grid_command_assembles_files(tmp_path):
    out = tmp_path / "grid.png"
    run = cli("grid", EXAMPLES / "chelsea.png", EXAMPLES / "coffee.png", EXAMPLES / "rocket.jpg", "-c", 3, "-o", out)
    assert run.returncode == 0, run.stderr
    assert Image.open(out).size[0] > 3 * 400


def test_engines_lists_options():
    rows = json.loads(cli("--json", "engines").stdout)
    names = {row["name"] for row in rows}
    assert {"patchmatch", "telea", "ns"} <= names
    assert "patch_size" in next(r for r in rows if r["name"] == "patchmatch")["options"]


def test_help_mentions_every_panel():
    run = cli("inpaint", "--help")
    assert run.returncode == 0
    for flag in ("--mask-mode", "--grow", "--feather", "--images", "--rows", "--grid", "--opt", "--area"):
        assert flag in run.stdout


def test_parameter_grid_over_two_fields(tmp_path, pair, photo):
    image, mask = pair
    grid = tmp_path / "xyz.png"
    run = cli("inpaint", image, "--mask", mask, "--engine", "telea", "--seed", 1, "--grid", grid,
              "--grid-x", "opt=radius=1,radius=9", "--grid-y", "grow=0,4,8", "--h-spacing", 0, "--v-spacing", 0)
    assert run.returncode == 2 and "unknown grid axis field 'opt'" in run.stderr  # options nest: not an axis
    run = cli("inpaint", image, "--mask", mask, "--engine", "telea", "--seed", 1, "--grid", grid,
              "--grid-x", "engine=telea,ns", "--grid-y", "grow=0,4,8", "--h-spacing", 0, "--v-spacing", 0)
    assert run.returncode == 0, run.stderr
    width, height = Image.open(grid).size
    h, w = photo.shape[:2]
    assert width > 2 * w and height > 3 * h  # 2 columns, 3 rows, plus label strips
    bad = cli("inpaint", image, "--mask", mask, "--grid", grid, "--grid-x", "grow=1,-2")
    assert bad.returncode == 2 and "grow" in bad.stderr and "Traceback" not in bad.stderr


def test_expensive_axis_runs_outermost():
    from canvaslab.tasks.requests import InpaintRequest
    from canvaslab.tasks.xyz import cell_requests, parse_axis, run_order

    x = parse_axis("model=a,b", InpaintRequest)
    y = parse_axis("cfg=3,5,7", InpaintRequest)
    order = run_order(cell_requests(InpaintRequest(engine="diffusion"), x, y), x, y)
    assert [cell[0] for cell in order] == [0, 0, 0, 1, 1, 1]  # each model once, all its cells together
    assert y.field == "guidance_scale"


@pytest.mark.parametrize("name, quality", [("o.jpg", 80), ("o.webp", 90)])
def test_replay_check_passes_for_lossy_outputs(tmp_path, pair, name, quality):
    """JPEG/WebP change pixels on save; replay must compare through the same encoding, not fail."""
    image, _ = pair
    out = tmp_path / name
    assert cli("outpaint", image, "--right", 16, "--seed", 2, "--quality", quality, "-o", out).returncode == 0
    replay = cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.returncode == 0, replay.stderr
    assert "identical pixels" in replay.stderr


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    """Without the train extra, `train` says what to install in one line, not a traceback."""
    import sys

    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ModuleNotFoundError
    result = CliRunner().invoke(app, ["train", "inpaint", "data.path=x", "--print-config"])
    assert result.exit_code == 2
    assert "needs the yaml package" in result.output and "canvaslab[train]" in result.output
    assert "Traceback" not in result.output


def test_pixel_limit_refuses_a_bomb_and_says_how_to_raise_it(tmp_path, pair):
    """Issue 10: a tiny PNG decoding to 12000x12000 is refused up front; the limit is raised by flag or env."""
    from core.test_image import one_bit_bomb

    image, mask = pair
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(one_bit_bomb(12000, 12000))
    run = cli("inpaint", bomb, "--mask", mask, "-o", tmp_path / "o.png")
    assert run.returncode == 2 and "12000x12000" in run.stderr and "--max-pixels" in run.stderr
    lowered = subprocess.run(
        [sys.executable, "-m", "canvaslab", "inpaint", str(image), "--mask", str(mask), "-o", str(tmp_path / "o.png")],
        capture_output=True, text=True, env={**os.environ, "CANVASLAB_MAX_PIXELS": "1000"},
    )
    assert lowered.returncode == 2 and "limit of 1,000" in lowered.stderr
    assert not (tmp_path / "o.png").exists()


def test_model_without_engine_runs_the_models_engine_not_patchmatch(tmp_path, pair):
    """Issue 10: `inpaint IMG --mask M --model sd15-inpaint --prompt ...` silently ran PatchMatch."""
    image, mask = pair
    out = tmp_path / "o.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}
    run = subprocess.run(
        [sys.executable, "-m", "canvaslab", "inpaint", str(image), "--mask", str(mask), "--model", "sd15-inpaint",
         "--prompt", "a vase", "--steps", "30", "-o", str(out)], capture_output=True, text=True, env=env,
    )
    # The diffusion engine looked for the model (not on this machine) instead of PatchMatch running.
    assert run.returncode == 3 and "sd15-inpaint" in run.stderr and "Hugging Face cache" in run.stderr
    assert not out.exists()
    refused = cli("inpaint", image, "--mask", mask, "--engine", "telea", "--prompt", "a vase", "-o", out)
    assert refused.returncode == 2 and "--prompt does not apply to the telea engine" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not out.exists()


def test_replay_of_an_older_recipe_with_a_prompt_for_a_classical_engine(tmp_path, pair):
    """Older versions recorded a prompt given to PatchMatch/Telea (ignored); replay drops it rather than refuse."""
    from canvaslab.core.image import save_image
    from canvaslab.core.metadata import read_metadata

    image, mask = pair
    out = tmp_path / "out.png"
    assert cli("inpaint", image, "--mask", mask, "--engine", "telea", "--seed", 2, "-o", out).returncode == 0
    meta = read_metadata(out)
    meta.recipe["request"]["prompt"] = "a red boat"
    save_image(out, np.asarray(Image.open(out).convert("RGB")), parameters=meta.parameters, recipe=meta.recipe)
    replay = cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.returncode == 0, replay.stderr
    assert "does not read prompt; replaying without" in replay.stderr and "identical pixels" in replay.stderr


def test_metadata_private_and_none(tmp_path, pair):
    """Issue 10: recipes carried the inputs' full paths; --metadata private keeps names and hashes only."""
    from canvaslab.core.metadata import read_metadata

    image, mask = pair
    out = tmp_path / "private.png"
    env = {**os.environ, "CANVASLAB_METADATA": "private"}
    run = subprocess.run([sys.executable, "-m", "canvaslab", "inpaint", str(image), "--mask", str(mask), "--engine",
                          "telea", "--seed", "1", "-o", str(out)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert str(tmp_path) not in out.read_bytes().decode("latin-1")
    recipe = read_metadata(out).recipe
    assert recipe["inputs"]["image"] == {"path": None, "name": image.name, "sha256": recipe["inputs"]["image"]["sha256"]}
    moved = tmp_path / "moved"
    moved.mkdir()
    for file in (out, image, mask):
        (moved / file.name).write_bytes(file.read_bytes())
    image.unlink()
    replay = cli("replay", moved / out.name, "-o", moved / "again.png", "--check")
    assert replay.returncode == 0 and "identical pixels" in replay.stderr, replay.stderr
    assert read_metadata(moved / "again.png").recipe["private"]

    bare = tmp_path / "bare.png"
    assert cli("inpaint", moved / image.name, "--mask", mask, "--engine", "telea", "--metadata", "none",
               "-o", bare).returncode == 0
    assert read_metadata(bare).parameters is None and read_metadata(bare).recipe is None


def _in_process(*args):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", [
    ["inpaint", "{image}", "--mask", "{mask}", "--engine", "telea", "-o", "{image}"],
    ["inpaint", "{image}", "--mask", "{mask}", "--engine", "telea", "-o", "{mask}"],
    ["mask", "{image}", "--auto", "damage", "-o", "{image}"],
    ["mask", "{image}", "--auto", "damage", "-o", "{other}", "--preview", "{image}"],
    ["mask", "ops", "{mask}", "--grow", "2", "-o", "{mask}"],
    ["mask", "ops", "{other}", "--resize-to", "{image}", "-o", "{image}"],
    ["control", "preview", "{image}", "-p", "canny", "-o", "{image}"],
    ["control", "preview", "{image}", "-p", "inpaint", "--mask", "{mask}", "-o", "{mask}"],
    ["texture", "seamless", "{image}", "-o", "{image}"],
])
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path, pair, command):
    """A new user's `-o photo.png` for `photo.png` replaced the photo with its mask or its result."""
    image, mask = pair
    other = write_png(tmp_path / "other.png", np.zeros((100, 150), np.uint8))
    before = {p: p.read_bytes() for p in (image, mask, other)}
    run = _in_process(*[a.format(image=image, mask=mask, other=other) for a in command])
    assert run.exit_code == 2, run.output
    assert "is also an input" in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_a_folder_run_into_its_own_folder_is_refused(tmp_path, photo, box_mask):
    """`--out` equal to `--images` made every image look finished (0 done, all 'already there'), and an --out
    inside --images would read the results as inputs on the next run."""
    images = tmp_path / "photos"
    write_png(images / "a.png", photo)
    write_png(tmp_path / "m.png", box_mask)
    for out in (images, images / "clean"):
        for command in (["mask", "--images", images, "--auto", "damage", "--out", out],
                        ["inpaint", "--images", images, "--masks", tmp_path / "m.png", "--engine", "telea", "--out", out]):
            run = _in_process(*command)
            assert run.exit_code == 2, run.output
            assert "inside --images" in run.stderr or "is --images" in run.stderr, run.stderr
            assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert sorted(p.name for p in images.rglob("*")) == ["a.png"]


def test_mask_folder_with_o_instead_of_out_says_so(tmp_path, photo):
    images = tmp_path / "photos"
    write_png(images / "a.png", photo)
    run = _in_process("mask", "--images", images, "--auto", "damage", "-o", tmp_path / "m.png")
    assert run.exit_code == 2 and "--out DIR" in run.stderr, run.stderr


def test_a_mask_that_covers_most_of_the_image_asks_whether_it_is_inverted(tmp_path, pair, box_mask):
    """A black-on-white mask (the object black) filled almost the whole photo without a word."""
    image, _ = pair
    inverted = write_png(tmp_path / "inverted.png", np.where(box_mask, 0, 255).astype(np.uint8))
    run = _in_process("inpaint", image, "--mask", inverted, "--engine", "telea", "-o", tmp_path / "o.png")
    assert run.exit_code == 0, run.output
    assert "--mask-mode black" in run.stderr and "covers" in run.stderr
    fine = _in_process("inpaint", image, "--mask", inverted, "--mask-mode", "black", "--engine", "telea",
                       "-o", tmp_path / "p.png")
    assert fine.exit_code == 0 and "--mask-mode" not in fine.stderr, fine.stderr


def test_generated_flags_state_their_bounds_in_help():
    """`mask --grow` and `video inpaint --threshold` refused values their help did not bound (`<int>` only)."""
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    def flag_help(args, flag):
        text = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "250"}).stdout
        return next(line for line in text.splitlines() if line.lstrip("│ ").startswith(f"{flag} "))

    assert "(0 to 512)" in flag_help(["mask", "make"], "--grow")
    assert "(1 to 255)" in flag_help(["video", "inpaint"], "--threshold")
    assert "(above 0, at most 1)" in flag_help(["inpaint"], "--strength")
    assert "(at least 0)" in flag_help(["video", "inpaint"], "--start")
    assert "to 4294967295" not in flag_help(["inpaint"], "--seed")


def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_work(tmp_path, photo, box_mask):
    """An --out that cannot be created failed every image on its own (a 10,000-row failure table)."""
    images = tmp_path / "photos"
    write_png(images / "a.png", photo)
    write_png(images / "b.png", photo)
    write_png(tmp_path / "m.png", box_mask)
    (tmp_path / "a-file").write_text("")
    for command in (["mask", "--images", images, "--auto", "damage", "--out", tmp_path / "a-file" / "out"],
                    ["inpaint", "--images", images, "--masks", tmp_path / "m.png", "--engine", "telea",
                     "--out", tmp_path / "a-file" / "out"]):
        run = _in_process(*command)
        assert run.exit_code == 2, run.output
        assert run.stderr.startswith("error: cannot create --out") and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_replay_of_a_missing_control_image_says_where_to_put_it(tmp_path):
    """Replay told the user to 'pass --image FILE' for a missing control or reference image, but --image
    replaces the input picture; the right fix is to put the file back or a copy beside the output."""
    from canvaslab.cli.tools import _with_conditioning_images
    from canvaslab.errors import InputError

    missing = {"path": str(tmp_path / "edges.png"), "sha256": "0" * 64}
    for values, inputs in (({"control": [{"model": "cn", "image": missing["path"]}]}, {"control_0": missing}),
                           ({"ip_adapter": [{"model": "ip", "images": [missing["path"]]}]}, {"ip_adapter_0_0": missing})):
        with pytest.raises(InputError) as caught:
            _with_conditioning_images(values, inputs, [tmp_path])
        assert "--image" not in str(caught.value) and "beside" in str(caught.value), caught.value


def test_a_folder_inpaint_without_its_model_stops_with_one_line(tmp_path, photo, box_mask):
    """Every image failed on its own with the same 'no lama model' sentence, in a table as long as the folder."""
    images = tmp_path / "photos"
    for name in ("a", "b", "c"):
        write_png(images / f"{name}.png", photo)
    write_png(tmp_path / "m.png", box_mask)
    run = _in_process("inpaint", "--images", images, "--masks", tmp_path / "m.png", "--engine", "lama",
                      "--model", tmp_path / "none.pt", "--out", tmp_path / "out")
    assert run.exit_code == 3, run.output
    assert run.stderr.startswith("error:") and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not any((tmp_path / "out").glob("*.png"))
