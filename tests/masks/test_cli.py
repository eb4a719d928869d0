"""`canvaslab mask` and `canvaslab mask ops` through the real command (typer's runner, in process):
what is written, --json, a folder of masks and its resume, mask algebra with known answers, replay of a
mask, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from canvaslab.cli.main import app
from masks.test_sam import scene
from masks.test_task import scratched


def run(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def grey(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def write_mask(path, box):
    mask = np.zeros((40, 60), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(path)
    return path


def test_a_click_writes_the_mask_and_json_tells_what_sam_said(mask_models, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(scene(80, 48)).save(image)
    out = run("--json", "mask", image, "--point", "20,30", "--multimask", "--model", mask_models["sam"],
              "--device", "cpu", "-o", tmp_path / "m.png", "--preview", tmp_path / "p.png")
    report = json.loads(out.stdout)
    assert report["output"] == str(tmp_path / "m.png") and report["size"] == [80, 48]
    assert len(report["scores"]) == 3 and report["scores"] == sorted(report["scores"], reverse=True)  # candidates, best first
    assert 0 <= report["coverage"] <= 1
    mask = grey(tmp_path / "m.png")
    assert mask.shape == (48, 80) and abs((mask == 255).mean() - report["coverage"]) < 1e-6
    preview = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
    original = scene(80, 48).astype(int)
    np.testing.assert_array_equal(preview[mask == 0], original[mask == 0])  # red only where the mask is
    info = json.loads(run("--json", "info", tmp_path / "m.png").stdout)
    assert info["recipe"]["task"] == "mask" and info["recipe"]["request"]["multimask"] is True


def test_a_mask_replays_to_identical_pixels(mask_models, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(scene(64, 40, seed=7)).save(image)
    run("mask", image, "--box", "5,5,40,30", "--model", mask_models["sam"], "--device", "cpu", "--grow", "2",
        "-o", tmp_path / "m.png")
    replay = run("replay", tmp_path / "m.png", "-o", tmp_path / "again.png", "--check")
    assert "identical pixels" in replay.output
    np.testing.assert_array_equal(grey(tmp_path / "again.png"), grey(tmp_path / "m.png"))


def test_private_metadata_keeps_no_path(tmp_path):
    image = tmp_path / "scan.png"
    Image.fromarray(scratched(0)).save(image)
    run("mask", image, "--auto", "damage", "--metadata", "private", "-o", tmp_path / "m.png")
    recipe = json.loads(run("--json", "info", tmp_path / "m.png").stdout)["recipe"]
    assert recipe["private"] is True and recipe["inputs"]["image"]["path"] is None
    assert str(tmp_path) not in json.dumps(recipe)


def test_one_rule_over_a_folder_and_the_rerun_skips_what_is_done(tmp_path):
    images, out = tmp_path / "scans", tmp_path / "masks"
    images.mkdir()
    for index in range(3):
        Image.fromarray(scratched(index)).save(images / f"s{index}.png")
    first = run("mask", "--images", images, "--auto", "damage", "--opt", "contrast=20", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["s0.png", "s1.png", "s2.png"]
    assert "3" in first.output
    (out / "s1.png").unlink()
    before = (out / "s0.png").stat().st_mtime_ns
    run("mask", "--images", images, "--auto", "damage", "--opt", "contrast=20", "--out", out)
    assert (out / "s1.png").exists() and (out / "s0.png").stat().st_mtime_ns == before


def test_watermark_over_a_folder_is_one_mask(tmp_path):
    images = tmp_path / "stock"
    images.mkdir()
    for index in range(3):
        Image.fromarray(scene(40, 30, seed=index)).save(images / f"{index}.png")
    run("mask", "--images", images, "--auto", "watermark", "-o", tmp_path / "wm.png")
    assert grey(tmp_path / "wm.png").shape == (30, 40)


def test_mask_ops_union_intersect_subtract_and_refine(tmp_path):
    a = write_mask(tmp_path / "a.png", (10, 10, 30, 30))
    b = write_mask(tmp_path / "b.png", (20, 20, 40, 35))
    expected_a, expected_b = grey(a) == 255, grey(b) == 255
    for flag, expected in (("--union", expected_a | expected_b), ("--intersect", expected_a & expected_b),
                           ("--subtract", expected_a & ~expected_b)):
        run("mask", "ops", a, b, flag, "-o", tmp_path / "r.png")
        np.testing.assert_array_equal(grey(tmp_path / "r.png") == 255, expected)
    run("mask", "ops", a, "--invert", "--grow", "0", "-o", tmp_path / "inv.png")
    np.testing.assert_array_equal(grey(tmp_path / "inv.png") == 255, ~expected_a)
    run("mask", "ops", a, "--grow", "2", "-o", tmp_path / "g.png")
    grown = grey(tmp_path / "g.png") == 255
    assert grown[8, 20] and not grown[7, 20] and grown[20, 31] and not grown[20, 32]
    black = tmp_path / "black.png"
    Image.fromarray(np.where(expected_a, 0, 255).astype(np.uint8)).save(black)
    run("mask", "ops", black, "--mask-mode", "black", "-o", tmp_path / "w.png")
    np.testing.assert_array_equal(grey(tmp_path / "w.png") == 255, expected_a)  # written white = fill


def test_mask_ops_resizes_to_an_image(tmp_path):
    a = write_mask(tmp_path / "a.png", (15, 10, 45, 30))
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((80, 120, 3), np.uint8)).save(big)
    run("mask", "ops", a, "--resize-to", big, "-o", tmp_path / "r.png")
    resized = grey(tmp_path / "r.png") == 255
    assert resized.shape == (80, 120)
    ys, xs = np.nonzero(resized)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (30, 89, 20, 59)


@pytest.mark.parametrize(("args", "message"), [
    (["mask", "{image}"], "say where the mask is"),
    (["mask", "{image}", "--point", "10,10", "--text", "cup"], "one way to make the mask"),
    (["mask", "{image}", "--point", "500,10", "--model", "{sam}", "--device", "cpu"], "outside the 60x40 image"),
    (["mask", "{image}", "--auto", "damage", "-o", "{tmp}/m.jpg"], "masks are written as PNG"),
    (["mask", "{image}", "--auto", "damage", "--out", "{tmp}/o"], "--out is the folder of masks for --images"),
    (["mask", "--images", "{tmp}", "--auto", "damage", "--out", "{tmp}/o", "-o", "x.png"], "-o names one mask file"),
    (["mask", "{image}", "--point", "10,10", "--model", "sam"], "is not in the Hugging Face cache"),
    (["mask", "ops", "{mask}", "{mask}"], "say how to combine them"),
    (["mask", "ops", "{mask}", "{mask}", "--union", "--subtract"], "combine masks one way"),
    (["mask", "ops", "{mask}", "--union"], "--union needs at least two masks"),
    (["mask", "ops", "{tmp}/missing.png", "{mask}", "--union"], "cannot read mask"),
])
def test_bad_input_is_one_line_and_nonzero(mask_models, tmp_path, args, message):
    image = tmp_path / "photo.png"
    Image.fromarray(scene(60, 40)).save(image)
    mask = write_mask(tmp_path / "mask.png", (1, 1, 5, 5))
    values = {"image": image, "mask": mask, "tmp": tmp_path, "sam": mask_models["sam"]}
    result = CliRunner().invoke(app, [a.format(**values) for a in args])
    assert result.exit_code in (2, 3), result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_every_request_field_has_a_flag_and_the_help_is_torch_free():
    import subprocess
    import sys

    import typer

    from canvaslab.tasks.requests import MaskRequest

    make = typer.main.get_command(app).commands["mask"].commands["make"]
    assert not set(MaskRequest.model_fields) - {p.name for p in make.params}
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom canvaslab.cli.main import app\n"
            "for args in (['mask', '--help'], ['mask', 'make', '--help'], ['mask', 'ops', '--help']):\n"
            "    assert CliRunner().invoke(app, args).exit_code == 0\n"
            "print(sorted(m for m in ('torch', 'transformers', 'scipy') if m in sys.modules))\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_models_list_names_the_mask_models_and_the_depth_preprocessor(tmp_path):
    """`canvaslab models list` listed diffusion aliases and erasers only: a user could not find what
    `mask --model sam` or `control preview -p depth` look for, nor whether it is here."""
    snapshot = tmp_path / "hub" / "models--facebook--sam-vit-base" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "sam"}')
    (tmp_path / "hub" / "models--facebook--sam-vit-base" / "refs").mkdir()
    (tmp_path / "hub" / "models--facebook--sam-vit-base" / "refs" / "main").write_text("0123abc")
    listed = run("--json", "models", "list", "--cache-dir", tmp_path / "hub")
    rows = {row["alias"]: row for row in json.loads(listed.stdout) if row["kind"] in ("mask", "preprocessor")}
    assert rows["sam"]["hub_id"] == "facebook/sam-vit-base" and rows["sam"]["cached"] is True
    assert rows["clipseg"]["cached"] is False and rows["grounding-dino"]["family"] == "detector"
    assert rows["depth"]["hub_id"] == "depth-anything/Depth-Anything-V2-Small-hf" and rows["depth"]["cached"] is False
    table = run("models", "list", "--cache-dir", tmp_path / "hub").stdout
    assert "sam-hq" in table and "grounding-dino" in table and "Mask models" in table


def test_mask_ops_output_replays_to_identical_pixels(tmp_path):
    """A `mask ops` result carries a recipe, yet `replay` said it had none: it now re-runs the ops on the
    recorded inputs (mask mode, threshold and --resize-to included)."""
    a = write_mask(tmp_path / "a.png", (5, 5, 30, 25))
    b = write_mask(tmp_path / "b.png", (20, 10, 50, 35))
    Image.fromarray(255 - grey(b)).save(tmp_path / "b-black.png")  # black = fill
    Image.fromarray(np.zeros((80, 120, 3), np.uint8)).save(tmp_path / "photo.png")
    run("mask", "ops", a, tmp_path / "b-black.png", "--union", "--mask-mode", "black", "--threshold", "100",
        "--resize-to", tmp_path / "photo.png", "--grow", "1", "--feather", "2", "-o", tmp_path / "u.png")
    replay = run("replay", tmp_path / "u.png", "-o", tmp_path / "again.png", "--check")
    assert "identical pixels" in replay.stderr
    assert np.array_equal(grey(tmp_path / "u.png"), grey(tmp_path / "again.png"))
    assert grey(tmp_path / "again.png").shape == (80, 120)
    (tmp_path / "b-black.png").unlink()
    gone = run("replay", tmp_path / "u.png", "-o", tmp_path / "third.png", code=2)
    assert "b-black.png" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1


def test_watermark_over_a_folder_skips_an_unreadable_file_and_names_it(tmp_path):
    """One broken file in a stock folder ended the whole watermark run; it is now left out with a notice,
    and the mask equals the one of the readable images alone."""
    images = tmp_path / "stock"
    images.mkdir()
    for index in range(4):
        Image.fromarray(scene(40, 30, seed=index)).save(images / f"{index}.png")
    run("mask", "--images", images, "--auto", "watermark", "-o", tmp_path / "clean.png")
    (images / "broken.png").write_text("not an image")
    done = run("--json", "mask", "--images", images, "--auto", "watermark", "-o", tmp_path / "wm.png")
    notices = json.loads(done.stdout)["notices"]
    assert any("broken.png" in n and "left out" in n for n in notices), notices
    assert np.array_equal(grey(tmp_path / "wm.png"), grey(tmp_path / "clean.png"))
    replay = run("replay", tmp_path / "wm.png", "-o", tmp_path / "again.png", "--check")
    assert "identical pixels" in replay.stderr
    for index in range(2):
        (images / f"{index}.png").unlink()
    few = run("mask", "--images", images, "--auto", "watermark", "-o", tmp_path / "x.png", code=2)
    assert "3 or more" in few.stderr and len(few.stderr.strip().splitlines()) <= 2, few.stderr


def test_a_watermark_mask_written_inside_its_folder_is_refused(tmp_path):
    """`-o stock/wm.png` put the mask among the images: the next run (and an inpaint of the folder) read it
    as one of the photos."""
    images = tmp_path / "stock"
    images.mkdir()
    for index in range(3):
        Image.fromarray(scene(40, 30, seed=index)).save(images / f"{index}.png")
    refused = run("mask", "--images", images, "--auto", "watermark", "-o", images / "wm.png", code=2)
    assert "inside --images" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in images.iterdir()) == ["0.png", "1.png", "2.png"]


def test_models_pull_knows_the_mask_and_depth_aliases(tmp_path):
    """`models list` shows `sam`; `models pull sam` tried a hub repo named 'sam'."""
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    for alias, hub_id in (("sam", "facebook/sam-vit-base"), ("depth", "depth-anything/Depth-Anything-V2-Small-hf")):
        pulled = CliRunner().invoke(app, ["models", "pull", alias, "--cache-dir", str(tmp_path)],
                                    env={"HF_HUB_OFFLINE": "1"})
        assert pulled.exit_code == 3 and f"'{hub_id}'" in pulled.stderr, pulled.output


def test_a_wrong_rule_setting_lists_the_rules_settings(tmp_path):
    """'--auto damage option unknown parameter 'foo'' named neither the flag nor what it takes."""
    image = tmp_path / "photo.png"
    Image.fromarray(scene(40, 30)).save(image)
    refused = run("mask", image, "--auto", "damage", "--opt", "wdth=3", "-o", tmp_path / "m.png", code=2)
    assert "--opt" in refused.stderr and "width, contrast, min_length, polarity" in refused.stderr, refused.stderr
    assert "'wdth'" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_a_folder_run_without_its_model_stops_with_one_line(tmp_path):
    """A missing mask model failed every image on its own (a table with the same sentence per row, exit 1)."""
    images = tmp_path / "shelf"
    images.mkdir()
    for index in range(3):
        Image.fromarray(scene(40, 30, seed=index)).save(images / f"{index}.png")
    run_ = run("mask", "--images", images, "--text", "the tag", "--text-model", "owner/not-cached-model",
               "--out", tmp_path / "tags", code=3)
    errors = [line for line in run_.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not-cached-model" in errors[0] and "failures" not in run_.stderr, run_.stderr
    assert run_.stderr.startswith("error:"), run_.stderr  # no progress bar left above it
    assert not any((tmp_path / "tags").glob("*.png"))
