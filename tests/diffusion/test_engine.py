"""The diffusion engine through canvaslab's own API and CLI, on tiny offline models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("diffusers")

import canvaslab  # noqa: E402
from canvaslab.errors import InputError, ModelNotAvailableError  # noqa: E402
from conftest import write_png  # noqa: E402


@pytest.fixture(scope="module")
def small(photo):
    """A 76x60 crop: not a multiple of 8, so alignment and exact restore are exercised."""
    image = np.ascontiguousarray(photo[20:80, 40:116])
    mask = np.zeros(image.shape[:2], bool)
    mask[18:42, 20:52] = True
    return image, mask


def run(small, folder, **params):
    image, mask = small
    params = {"engine": "diffusion", "model": str(folder), "steps": 2, "seed": 1, **params}
    return canvaslab.inpaint(image, mask, **params)


@pytest.mark.parametrize("kind", ["sd-inpaint", "sd-txt2img", "sdxl-inpaint"])
def test_inpaint_restores_size_and_keeps_unmasked_pixels(small, tiny_folders, kind):
    image, mask = small
    result = run(small, tiny_folders[kind], prompt="a wooden table")
    assert result.image.shape == image.shape
    np.testing.assert_array_equal(result.image[~mask], image[~mask])
    assert np.abs(result.image[mask].astype(int) - image[mask].astype(int)).mean() > 1


def test_same_seed_same_pixels_other_seed_other_pixels(small, tiny_folders):
    a = run(small, tiny_folders["sd-inpaint"], seed=3)
    b = run(small, tiny_folders["sd-inpaint"], seed=3)
    c = run(small, tiny_folders["sd-inpaint"], seed=4)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_scheduler_switch_changes_output_and_default_comes_back(small, tiny_folders):
    folder = tiny_folders["sd-inpaint"]
    own = run(small, folder)
    euler = run(small, folder, scheduler="euler")
    ddim = run(small, folder, scheduler="ddim")
    again = run(small, folder)
    assert not np.array_equal(euler.image, ddim.image)
    np.testing.assert_array_equal(own.image, again.image)
    assert "Sampler: Euler," in euler.parameters and "Steps: 2" in euler.parameters


# name -> (diffusers class, config it must carry, A1111 sampler label); written out, not read from the table
EXPECTED_SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}, "Euler"),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "euler-karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "Euler Karras"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "ddpm": ("DDPMScheduler", {}, "DDPM"),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),  # before: 2 steps crashed in diffusers
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}, "DPM++ 2M"),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
                       "DPM++ 2M Karras"),
    "dpm++2m-sde-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
                           "DPM++ 2M SDE Karras"),
    "dpm++sde-karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}, "DPM++ SDE Karras"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "lcm": ("LCMScheduler", {}, "LCM"),
    "tcd": ("TCDScheduler", {}, "TCD"),
    # trailing spacing (few-step LoRAs and distilled models); A1111/ComfyUI's nearest is "SGM Uniform"
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing", "use_karras_sigmas": False},
                       "Euler SGM Uniform"),
    "euler-a-trailing": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, "Euler a SGM Uniform"),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}, "DDIM SGM Uniform"),
    "dpm++2m-trailing": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "timestep_spacing": "trailing",
                                                         "use_karras_sigmas": False}, "DPM++ 2M SGM Uniform"),
}


def test_every_scheduler_name_is_tested():
    from canvaslab.engines.diffusion.schedulers import SCHEDULERS

    assert set(SCHEDULERS) == set(EXPECTED_SCHEDULERS)


@pytest.mark.parametrize("name", list(EXPECTED_SCHEDULERS))
def test_each_scheduler_name_runs_its_own_class(small, tiny_folders, name):
    from canvaslab.engines.diffusion import models

    class_name, config, label = EXPECTED_SCHEDULERS[name]
    result = run(small, tiny_folders["sd-inpaint"], scheduler=name)
    assert result.image.shape == small[0].shape
    pipe = models.load_pipeline(str(tiny_folders["sd-inpaint"]), task="inpaint")  # the cached one the run used
    assert type(pipe.scheduler).__name__ == class_name
    assert {key: pipe.scheduler.config[key] for key in config} == config
    assert pipe.scheduler.config["num_train_timesteps"] == 1000  # built from the model's own config
    assert f"Sampler: {label}," in result.parameters


def test_unknown_scheduler_is_a_one_line_error(small, tiny_folders):
    with pytest.raises(InputError, match="unknown scheduler 'eulr'"):
        run(small, tiny_folders["sd-inpaint"], scheduler="eulr")


def test_single_file_with_local_config(small, tiny_folders, tiny_single_files):
    from_folder = run(small, tiny_folders["sd-inpaint"])
    from_file = run(small, tiny_single_files["sd-inpaint"], options={"config": str(tiny_folders["sd-inpaint"])})
    np.testing.assert_allclose(from_file.image.astype(int), from_folder.image.astype(int), atol=1)


def test_outpaint_with_diffusion(small, tiny_folders):
    image, _ = small
    result = canvaslab.outpaint(
        image, right=24, bottom=8, engine="diffusion", model=str(tiny_folders["sd-inpaint"]), steps=2, seed=0
    )
    h, w = image.shape[:2]
    assert result.image.shape == (h + 8, w + 24, 3)
    kept = ~result.mask[:h, :w]
    np.testing.assert_array_equal(result.image[:h, :w][kept], image[kept])


def test_missing_model_fails_fast_in_one_line(small):
    with pytest.raises(ModelNotAvailableError) as info:
        run(small, "/nowhere/model")
    assert "\n" not in str(info.value) and "/nowhere/model" in str(info.value)


def cli(*args, **env):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=300)


@pytest.mark.slow
def test_cli_diffusion_inpaint_replays_identically(tmp_path, small, tiny_folders):
    image, mask = small
    src, mask_path, out = write_png(tmp_path / "i.png", image), write_png(tmp_path / "m.png", mask), tmp_path / "o.png"
    done = cli("inpaint", src, "--mask", mask_path, "--engine", "diffusion", "--model", tiny_folders["sd-inpaint"],
               "--steps", 2, "--scheduler", "euler-a", "--seed", 9, "--prompt", "wood", "-o", out)
    assert done.returncode == 0, done.stderr
    meta = json.loads(cli("--json", "info", out).stdout)
    assert meta["parameters"].startswith("wood\n") and "Sampler: Euler a" in meta["parameters"]
    replay = cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.returncode == 0, replay.stderr


def test_cli_missing_alias_offline_exits_3_with_one_line(tmp_path, small):
    image, mask = small
    done = cli("inpaint", write_png(tmp_path / "i.png", image), "--mask", write_png(tmp_path / "m.png", mask),
               "--engine", "diffusion", "--model", "sdxl-inpaint", "--cache-dir", tmp_path / "empty-cache")
    assert done.returncode == 3
    assert "Traceback" not in done.stderr and "sdxl-inpaint" in done.stderr and "HF_HOME" in done.stderr


def test_models_list_info_and_offline_pull(tiny_folders, hub_cache):
    listed = json.loads(cli("--json", "models", "list", "--cache-dir", hub_cache).stdout)
    cached = {row["alias"]: row["cached"] for row in listed}
    assert cached["sd15-inpaint"] is True and cached["sdxl"] is False
    info = json.loads(cli("--json", "models", "info", tiny_folders["sdxl-inpaint"]).stdout)
    assert (info["family"], info["kind"], info["unet_in_channels"]) == ("sdxl", "inpaint", 9)
    pull = cli("models", "pull", "sdxl", "--cache-dir", hub_cache)
    assert pull.returncode == 3 and "could not download" in pull.stderr and "Traceback" not in pull.stderr


def test_only_masked_works_at_the_requested_size_and_pastes_back(small, tiny_folders):
    image, mask = small
    a = run(small, tiny_folders["sd-inpaint"], area="masked", padding=4, size=64)
    b = run(small, tiny_folders["sd-inpaint"], area="masked", padding=4, size=128)
    for result in (a, b):
        assert result.image.shape == image.shape
        np.testing.assert_array_equal(result.image[~mask], image[~mask])
    assert not np.array_equal(a.image, b.image)
    default = run(small, tiny_folders["sd-inpaint"], area="masked", padding=4)  # the model's native size
    assert default.image.shape == image.shape


@pytest.mark.parametrize("content", ["fill", "latent-noise", "latent-nothing"])
def test_masked_content_changes_the_start_when_strength_below_one(small, tiny_folders, content):
    image, mask = small
    original = run(small, tiny_folders["sd-inpaint"], strength=0.6)
    other = run(small, tiny_folders["sd-inpaint"], strength=0.6, masked_content=content)
    again = run(small, tiny_folders["sd-inpaint"], strength=0.6, masked_content=content)
    np.testing.assert_array_equal(other.image, again.image)
    assert not np.array_equal(other.image[mask], original.image[mask])
    np.testing.assert_array_equal(other.image[~mask], image[~mask])
    assert f"Masked content: {content}" in other.parameters


def test_masked_content_at_full_strength_says_it_does_nothing(small, tiny_folders):
    result = run(small, tiny_folders["sd-inpaint"], masked_content="fill")
    assert any("only matters with --strength < 1" in n for n in result.notices)


def test_mask_weight_blends_the_conditioning(small, tiny_folders):
    full = run(small, tiny_folders["sd-inpaint"])
    explicit = run(small, tiny_folders["sd-inpaint"], mask_weight=1.0)
    half = run(small, tiny_folders["sd-inpaint"], mask_weight=0.3)
    np.testing.assert_array_equal(full.image, explicit.image)
    assert not np.array_equal(full.image, half.image)
    plain = run(small, tiny_folders["sd-txt2img"], mask_weight=0.3)
    assert any("only affects inpainting models" in n for n in plain.notices)


def test_tiled_outpaint_with_diffusion_covers_the_canvas(small, tiny_folders):
    image, _ = small
    h, w = image.shape[:2]
    result = canvaslab.outpaint(image, right=110, engine="diffusion", model=str(tiny_folders["sd-inpaint"]),
                                steps=2, seed=0, tile=64, overlap=0, feather=0, fill="edge")
    assert result.image.shape == (h, w + 110, 3)
    np.testing.assert_array_equal(result.image[:, :w], image)
    prefill = np.repeat(image[:, -1:], 110, axis=1).astype(int)  # what "edge" put there before the engine ran
    changed = np.abs(result.image[:, w:].astype(int) - prefill).max(axis=2) > 0
    assert changed.mean() > 0.95  # every window ran: no strip keeps the pre-fill
