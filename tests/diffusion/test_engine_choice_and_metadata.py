"""Issue 10 seen from outside, on tiny offline diffusion models: the model picks the engine, and outputs
say what made them the way A1111 readers expect."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("diffusers")

import canvaslab  # noqa: E402
from conftest import write_png  # noqa: E402
from infotext import check_output, sd_parsers_read  # noqa: E402


@pytest.fixture(autouse=True)
def _own_hash_cache(tmp_path, monkeypatch):
    """Model digests go to this test's folder, not to the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def small(photo):
    image = np.ascontiguousarray(photo[20:80, 40:116])
    mask = np.zeros(image.shape[:2], bool)
    mask[18:42, 20:52] = True
    return image, mask


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_model_without_engine_paints_with_diffusion(small, tiny_folders):
    image, mask = small
    result = canvaslab.inpaint(image, mask, model=str(tiny_folders["sd-inpaint"]), prompt="a vase", steps=2, seed=1)
    assert result.recipe["request"]["engine"] == "diffusion"
    assert "Steps: 2" in result.parameters and result.parameters.startswith("a vase\n")
    patchmatch = canvaslab.inpaint(image, mask, seed=1)
    assert not np.array_equal(result.image[mask], patchmatch.image[mask])


def test_cli_model_without_engine_paints_with_diffusion(tmp_path, small, tiny_folders):
    image, mask = small
    out = tmp_path / "o.png"
    done = cli("inpaint", write_png(tmp_path / "i.png", image), "--mask", write_png(tmp_path / "m.png", mask),
               "--model", tiny_folders["sd-txt2img"], "--prompt", "wood", "--steps", 2, "--seed", 3, "-o", out)
    assert done.returncode == 0, done.stderr
    meta = json.loads(cli("--json", "info", out).stdout)
    assert meta["recipe"]["request"]["engine"] == "diffusion" and "Steps: 2" in meta["parameters"]


PROMPT = 'a "quiet" café, 画像: sunrise\nsecond line'
NEGATIVE = "blurry, lowres"


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_every_task_s_output_parses_as_a1111(tmp_path, small, tiny_folders, suffix):
    image, mask = small
    prompts = {"prompt": PROMPT, "negative_prompt": NEGATIVE}
    results = {
        "inpaint": canvaslab.inpaint(image, mask, model=str(tiny_folders["sd-inpaint"]), steps=2, seed=4,
                                     scheduler="euler-a", **prompts),
        "outpaint": canvaslab.outpaint(image, right=16, model=str(tiny_folders["sd-inpaint"]), sampling_steps=2,
                                       seed=4, **prompts),
        "generate": canvaslab.generate(model=str(tiny_folders["sd-txt2img"]), steps=2, seed=4, size=64, **prompts),
        "edit": canvaslab.edit(image, instruction=PROMPT, negative_prompt=NEGATIVE,
                               model=str(tiny_folders["sd-pix2pix"]), steps=2, seed=4),
    }
    for task, result in results.items():
        settings = check_output(result.save(tmp_path / f"{task}{suffix}"), prompt=PROMPT, negative=NEGATIVE, seed=4)
        assert settings["Steps"] == "2", task
    assert check_output(tmp_path / f"inpaint{suffix}", prompt=PROMPT, negative=NEGATIVE)["Sampler"] == "Euler a"


def all_text(path):
    """Everything an image file says, as text (chunks, EXIF), to look for paths in."""
    return path.read_bytes().decode("latin-1")


def test_parameters_name_a_local_checkpoint_by_file_name_and_a1111_hash(tmp_path, small, tiny_folders, tiny_single_files):
    """Issue 10: the A1111 line carried `Model: /home/.../models/x`; A1111 writes the name and a short hash."""
    import hashlib

    image, mask = small
    checkpoint = tiny_single_files["sd-inpaint"]
    result = canvaslab.inpaint(image, mask, model=str(checkpoint), options={"config": str(tiny_folders["sd-inpaint"])},
                               prompt="wood", steps=2, seed=1)
    out = result.save(tmp_path / "out.png", metadata="private")
    settings = check_output(out, prompt="wood", seed=1)
    assert settings["Model"] == checkpoint.stem and settings["Engine config"] == tiny_folders["sd-inpaint"].name
    assert settings["Model hash"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]  # Civitai's AutoV2
    [sampler] = sd_parsers_read(out).samplers
    assert (sampler.model.name, sampler.model.hash) == (checkpoint.stem, settings["Model hash"])
    assert str(checkpoint.parent) not in result.parameters and str(tiny_folders["sd-inpaint"]) not in all_text(out)


@pytest.mark.slow
def test_private_outputs_carry_no_local_path_and_still_replay(tmp_path, small, tiny_folders):
    """--metadata private: names and hashes instead of paths; replay finds inputs beside the image and the
    model by its hash, or takes --model on a machine that never used it."""
    image, mask = small
    home = tmp_path / "home" / "alice"
    src, mask_path = write_png(home / "photos" / "in.png", image), write_png(home / "photos" / "m.png", mask)
    model = tiny_folders["sd-inpaint"]
    out = home / "out" / "o.png"
    env = {"XDG_CACHE_HOME": str(home / ".cache")}
    done = cli_env(env, "inpaint", src, "--mask", mask_path, "--model", model, "--prompt", "wood", "--steps", 2,
                   "--seed", 5, "--metadata", "private", "--rows", 2, "--grid", home / "out" / "grid.png", "-o", out)
    assert done.returncode == 0, done.stderr
    for written in (out, home / "out" / "o-seed6.png", home / "out" / "grid.png"):
        text = all_text(written)
        assert str(home) not in text and str(model.parent) not in text, written.name
    recipe = json.loads(cli_env(env, "--json", "info", out).stdout)["recipe"]
    assert recipe["private"] and recipe["inputs"]["image"]["name"] == "in.png"
    assert recipe["request"]["model"] == model.name and len(recipe["models"]["model"]["sha256"]) == 64

    shared = tmp_path / "bob"  # what someone else receives: the image and its inputs, no folders
    shared.mkdir()
    for file in (out, src, mask_path):
        (shared / file.name).write_bytes(file.read_bytes())
    replayed = cli_env(env, "replay", shared / "o.png", "-o", shared / "again.png", "--check")
    assert replayed.returncode == 0 and "identical pixels" in replayed.stderr, replayed.stderr
    elsewhere = {"XDG_CACHE_HOME": str(tmp_path / "bob-cache")}  # a machine that never hashed the model
    missing = cli_env(elsewhere, "replay", shared / "o.png", "-o", shared / "again.png")
    assert missing.returncode == 2 and "pass --model PATH" in missing.stderr and model.name in missing.stderr
    given = cli_env(elsewhere, "replay", shared / "o.png", "--model", model, "-o", shared / "again.png", "--check")
    assert given.returncode == 0, given.stderr


def cli_env(env, *args):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_grid_over_models_runs_each_model_on_its_engine(small, tiny_folders):
    """--grid-x model=A,B with no --engine: the cells are diffusion runs, not a PatchMatch request refusing
    --model (the base request without a model is a PatchMatch one)."""
    from canvaslab.tasks.requests import InpaintRequest
    from canvaslab.tasks.xyz import base_request, cell_requests, parse_axis

    x = parse_axis(f"model={tiny_folders['sd-inpaint']},{tiny_folders['sd-txt2img']}", InpaintRequest)
    cells = cell_requests(base_request(InpaintRequest, {"prompt": "wood", "steps": 2}, x, None), x, None)
    assert [cells[(c, 0)].engine for c in range(2)] == ["diffusion", "diffusion"]
    assert all(cell.prompt == "wood" for cell in cells.values())


@pytest.mark.slow
def test_grid_over_engines_leaves_a_prompt_out_of_the_classical_cells(tmp_path, small, tiny_folders):
    image, mask = small
    grid = tmp_path / "grid.png"
    done = cli("inpaint", write_png(tmp_path / "i.png", image), "--mask", write_png(tmp_path / "m.png", mask),
               "--model", tiny_folders["sd-inpaint"], "--prompt", "wood", "--steps", 2, "--seed", 1,
               "--grid", grid, "--grid-x", "engine=patchmatch,diffusion")
    assert done.returncode == 0, done.stderr
    assert "engine=patchmatch: its engine does not read" in done.stderr
    cells = json.loads(cli("--json", "info", grid).stdout)["recipe"]["canvaslab_xyz"]["cells"]
    engines = [(cell["request"]["engine"], cell["request"]["prompt"]) for cell in cells]
    assert sorted(engines) == [("diffusion", "wood"), ("patchmatch", "")]
