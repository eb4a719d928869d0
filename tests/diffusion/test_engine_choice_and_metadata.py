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
from infotext import check_output  # noqa: E402


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
