"""Every transformer family through canvaslab's own API on tiny offline models (tests/diffusion/tiny_dit.py):
detection, the pixel guarantees of inpainting (sizes restored, unmasked pixels bit-identical), determinism,
generate and edit, the model's defaults, flow-matching schedulers, and transformer-only single files
(safetensors and GGUF) with a base folder."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")

import canvaslab  # noqa: E402
from canvaslab.engines.diffusion import models  # noqa: E402
from canvaslab.errors import InputError, ModelNotAvailableError  # noqa: E402

from .tiny_dit import DIT_SPECS, save_transformer_gguf, save_transformer_single_file  # noqa: E402

# kind -> (family, kind, variant) that detection must report
DETECTED = {
    "sd3-txt2img": ("sd3", "txt2img", "sd3"),
    "sd35-txt2img": ("sd3", "txt2img", "sd35"),
    "flux-txt2img": ("flux", "txt2img", "dev"),
    "flux-schnell": ("flux", "txt2img", "schnell"),
    "flux-fill": ("flux", "inpaint", "fill"),
    "flux-kontext": ("flux-kontext", "edit", "kontext"),
    "qwen-image": ("qwen-image", "txt2img", "t2i"),
    "qwen-image-edit": ("qwen-image", "edit", "edit"),
    "flux2-klein": ("flux2", "txt2img", "klein"),
    "flux2-klein-base": ("flux2", "txt2img", "klein-base"),
    "z-image": ("z-image", "txt2img", "turbo"),
}
INPAINT_KINDS = [kind for kind, spec in DIT_SPECS.items() if "inpaint" in spec.pipelines]
GENERATE_KINDS = [kind for kind, spec in DIT_SPECS.items() if "txt2img" in spec.pipelines]
EDIT_KINDS = ["flux-kontext", "qwen-image-edit", "flux2-klein"]


@pytest.fixture(autouse=True)
def small_qwen_edits(monkeypatch):
    """Qwen-Image-Edit works at ~1 Mpx whatever the input (6-20 s a call on a tiny model): its sizing function
    answers 64x64 here; the engine scales any other answer back (test_qwen_edit_answer_is_scaled_back)."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_inpaint

    for module in (pipeline_qwenimage_edit, pipeline_qwenimage_edit_inpaint):
        monkeypatch.setattr(module, "calculate_dimensions", lambda area, ratio: (64, 64, None))


@pytest.fixture(scope="module")
def picture(photo):
    """76x60: not a multiple of 16, so padding to the families' multiple and the exact restore are exercised."""
    image = np.ascontiguousarray(photo[20:80, 40:116])
    mask = np.zeros(image.shape[:2], bool)
    mask[18:42, 20:52] = True
    return image, mask


def inpaint(picture, folder, **params):
    image, mask = picture
    return canvaslab.inpaint(image, mask, **{"model": str(folder), "steps": 2, "seed": 1, "prompt": "a cat", **params})


@pytest.mark.parametrize("kind", list(DETECTED))
def test_each_family_is_recognised_from_its_folder(kind, tiny_dit_folders):
    info = models.detect(models.resolve_source(str(tiny_dit_folders[kind])))
    assert (info.family, info.kind, info.variant) == DETECTED[kind]
    assert info.prediction_type == "flow"


@pytest.mark.parametrize("kind", INPAINT_KINDS)
def test_inpaint_restores_size_keeps_unmasked_pixels_and_is_deterministic(kind, picture, tiny_dit_folders):
    image, mask = picture
    first = inpaint(picture, tiny_dit_folders[kind])
    assert first.recipe["request"]["engine"] == "diffusion"  # the model picked its engine
    assert first.image.shape == image.shape
    np.testing.assert_array_equal(first.image[~mask], image[~mask])
    assert np.abs(first.image[mask].astype(int) - image[mask].astype(int)).mean() > 1
    np.testing.assert_array_equal(inpaint(picture, tiny_dit_folders[kind]).image, first.image)
    assert not np.array_equal(inpaint(picture, tiny_dit_folders[kind], seed=2).image, first.image)


@pytest.mark.parametrize("kind", GENERATE_KINDS)
def test_generate_is_deterministic_at_the_asked_size(kind, tiny_dit_folders):
    params = dict(prompt="a lighthouse", model=str(tiny_dit_folders[kind]), steps=2, width=80, height=48)
    first = canvaslab.generate(seed=3, **params)
    assert first.image.shape == (48, 80, 3)
    np.testing.assert_array_equal(canvaslab.generate(seed=3, **params).image, first.image)
    assert not np.array_equal(canvaslab.generate(seed=4, **params).image, first.image)


def test_generate_refuses_sizes_off_the_family_multiple(tiny_dit_folders):
    with pytest.raises(InputError, match="width 72 must be a multiple of 16"):
        canvaslab.generate(prompt="x", model=str(tiny_dit_folders["flux-txt2img"]), width=72, height=64, steps=1)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edit_restores_size_and_is_deterministic(kind, picture, tiny_dit_folders):
    image, _ = picture
    params = dict(instruction="make it winter", model=str(tiny_dit_folders[kind]), steps=2)
    first = canvaslab.edit(image, seed=5, **params)
    assert first.image.shape == image.shape
    np.testing.assert_array_equal(canvaslab.edit(image, seed=5, **params).image, first.image)
    assert not np.array_equal(canvaslab.edit(image, seed=6, **params).image, first.image)


def test_qwen_edit_answer_is_scaled_back(picture, tiny_dit_folders, monkeypatch):
    """The Qwen edit pipelines answer at a size of their own choosing (~1 Mpx for real models): the result
    comes back at the input's size, unmasked pixels untouched."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_inpaint

    monkeypatch.setattr(pipeline_qwenimage_edit_inpaint, "calculate_dimensions", lambda area, ratio: (96, 80, None))
    image, mask = picture
    result = inpaint(picture, tiny_dit_folders["qwen-image-edit"])
    assert result.image.shape == image.shape
    np.testing.assert_array_equal(result.image[~mask], image[~mask])


def test_unset_steps_and_guidance_are_the_models_own(picture, tiny_dit_folders):
    fill = inpaint(picture, tiny_dit_folders["flux-fill"], steps=None)
    assert "Steps: 50, Sampler: Euler, CFG scale: 30" in fill.parameters
    assert fill.recipe["request"]["steps"] is None and fill.recipe["request"]["guidance_scale"] is None
    schnell = inpaint(picture, tiny_dit_folders["flux-schnell"], steps=None)
    assert "Steps: 4," in schnell.parameters
    sd = inpaint(picture, tiny_dit_folders["sd3-txt2img"], guidance_scale=4.5)
    assert "Steps: 2, Sampler: Euler, CFG scale: 4.5" in sd.parameters


def test_guidance_changes_what_a_true_cfg_family_paints(picture, tiny_dit_folders):
    """Qwen-Image's --guidance-scale is its true_cfg_scale (CFG with a negative prompt, " " when none given)."""
    folder = tiny_dit_folders["qwen-image"]
    assert not np.array_equal(inpaint(picture, folder, guidance_scale=1.0).image,
                              inpaint(picture, folder, guidance_scale=6.0).image)


def test_flow_schedulers_switch_and_noise_samplers_are_refused(picture, tiny_dit_folders):
    folder = tiny_dit_folders["flux-fill"]
    own = inpaint(picture, folder, steps=4)
    karras = inpaint(picture, folder, steps=4, scheduler="euler-karras")
    assert not np.array_equal(own.image, karras.image) and "Sampler: Euler Karras" in karras.parameters
    np.testing.assert_array_equal(inpaint(picture, folder, steps=4).image, own.image)  # the model's own comes back
    with pytest.raises(InputError, match="scheduler 'dpm\\+\\+2m' does not fit a flow-matching model: choose one of euler"):
        inpaint(picture, folder, scheduler="dpm++2m")


def test_negative_prompt_on_distilled_flux_needs_true_cfg(picture, tiny_dit_folders):
    folder = tiny_dit_folders["flux-fill"]
    plain = inpaint(picture, tiny_dit_folders["flux-txt2img"], negative_prompt="blur")
    assert any("--opt true_cfg_scale" in note for note in plain.notices)
    cfg = inpaint(picture, tiny_dit_folders["flux-txt2img"], negative_prompt="blur", options={"true_cfg_scale": 3})
    assert not np.array_equal(plain.image, cfg.image) and not any("true_cfg" in n for n in cfg.notices)
    assert inpaint(picture, folder).image.shape == picture[0].shape


@pytest.mark.parametrize("layout", ["diffusers", "bfl"])
def test_flux2_transformer_file_with_a_base_folder_equals_the_folder(layout, picture, tiny_dit_folders, tmp_path):
    folder = tiny_dit_folders["flux2-klein"]
    path = save_transformer_single_file("flux2-klein", tmp_path / "klein.safetensors", layout=layout)
    assert models.detect(models.resolve_source(str(path), config=str(folder))).variant == "klein"
    np.testing.assert_array_equal(inpaint(picture, path, options={"base": str(folder)}).image,
                                  inpaint(picture, folder).image)


def test_fill_transformer_file_joins_a_dev_folder(picture, tiny_dit_folders, tmp_path):
    """flux1-fill-dev.safetensors beside a FLUX.1 dev folder: the weights say Fill (384 inputs), the folder
    gives text encoders and VAE."""
    path = save_transformer_single_file("flux-fill", tmp_path / "flux1-fill-dev.safetensors")
    info = models.detect(models.resolve_source(str(path), config=str(tiny_dit_folders["flux-txt2img"])))
    assert (info.family, info.kind, info.variant, info.in_channels) == ("flux", "inpaint", "fill", 384)
    np.testing.assert_array_equal(
        inpaint(picture, path, options={"base": str(tiny_dit_folders["flux-fill"])}).image,
        inpaint(picture, tiny_dit_folders["flux-fill"]).image,
    )


def test_a_transformer_file_alone_says_what_it_needs(picture, tmp_path):
    path = save_transformer_single_file("flux-fill", tmp_path / "flux1-fill-dev.safetensors")
    with pytest.raises(ModelNotAvailableError) as caught:
        inpaint(picture, path)
    message = str(caught.value)
    assert "\n" not in message and "FLUX.1 transformer alone" in message and "--opt base=FOLDER" in message


def test_gguf_quantised_fill_runs_on_the_cpu_close_to_the_full_model(picture, tiny_dit_folders, tmp_path):
    pytest.importorskip("gguf")
    path = save_transformer_gguf("flux-fill", tmp_path / "flux1-fill-dev-Q8_0.gguf", quant="Q8_0")
    info = models.detect(models.resolve_source(str(path), config=str(tiny_dit_folders["flux-fill"])))
    assert (info.family, info.variant) == ("flux", "fill")
    image, mask = picture
    quantised = inpaint(picture, path, options={"base": str(tiny_dit_folders["flux-fill"])})
    full = inpaint(picture, tiny_dit_folders["flux-fill"])
    np.testing.assert_array_equal(quantised.image[~mask], image[~mask])
    assert np.abs(quantised.image.astype(int) - full.image.astype(int))[mask].mean() < 8  # Q8_0: close, not equal
    assert "Model: flux1-fill-dev-Q8_0," in quantised.parameters  # A1111 names a checkpoint by its stem
    assert str(tmp_path) not in quantised.parameters and "Engine base: flux-fill" in quantised.parameters


def test_fill_model_refuses_text_to_image_in_one_line(tiny_dit_folders):
    with pytest.raises(InputError) as caught:
        canvaslab.generate(prompt="x", model=str(tiny_dit_folders["flux-fill"]), size=64, steps=1)
    assert "\n" not in str(caught.value) and "inpainting FLUX.1 model and cannot run task 'txt2img'" in str(caught.value)


@pytest.mark.parametrize("kind", ["flux-kontext", "qwen-image-edit"])
def test_masked_edit_changes_only_the_masked_pixels(kind, picture, tiny_dit_folders):
    image, mask = picture
    result = canvaslab.edit(image, mask=mask, instruction="make it winter", model=str(tiny_dit_folders[kind]),
                            steps=2, seed=1)
    assert result.image.shape == image.shape
    np.testing.assert_array_equal(result.image[~mask], image[~mask])
    assert np.abs(result.image[mask].astype(int) - image[mask].astype(int)).mean() > 1
    assert result.recipe["task"] == "inpaint" and result.recipe["request"]["prompt"] == "make it winter"


def test_masked_edit_with_instruct_pix2pix_is_refused_in_one_line(picture, tiny_folders):
    image, mask = picture
    with pytest.raises(InputError) as caught:
        canvaslab.edit(image, mask=mask, instruction="x", model=str(tiny_folders["sd-pix2pix"]))
    assert "\n" not in str(caught.value) and "has no masked-edit pipeline" in str(caught.value)


@pytest.mark.slow
def test_cli_masked_edit_with_kontext_replays(picture, tiny_dit_folders, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from conftest import write_png

    image, mask = picture
    out = tmp_path / "o.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300)

    done = cli("edit", write_png(tmp_path / "i.png", image), "--mask", write_png(tmp_path / "m.png", mask),
               "--model", tiny_dit_folders["flux-kontext"], "--instruction", "a red sky", "--steps", 2, "--seed", 3,
               "-o", out)
    assert done.returncode == 0, done.stderr
    assert json.loads(cli("--json", "info", out).stdout)["recipe"]["task"] == "inpaint"
    replay = cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.returncode == 0 and "identical pixels" in replay.stderr, replay.stderr


@pytest.mark.parametrize("kind", ["sd3-txt2img", "flux-fill", "qwen-image", "flux2-klein", "z-image"])
def test_memory_options_work_for_every_family(kind, tiny_dit_folders):
    """VAE tiling at a size above the tiny VAEs' tile (so tiles really run) and attention slicing."""
    rng = np.random.default_rng(0)
    image = (rng.random((160, 160, 3)) * 255).astype(np.uint8)
    mask = np.zeros((160, 160), bool)
    mask[40:120, 48:112] = True
    params = dict(model=str(tiny_dit_folders[kind]), steps=2, seed=1, prompt="a cat")
    for memory in ({"vae_tiling": True}, {"attention_slicing": True}):
        result = canvaslab.inpaint(image, mask, **params, **memory)
        assert result.image.shape == image.shape
        np.testing.assert_array_equal(result.image[~mask], image[~mask])


def test_quantisation_is_refused_off_cuda_in_one_line(picture, tiny_dit_folders):
    with pytest.raises(InputError) as caught:
        inpaint(picture, tiny_dit_folders["flux-fill"], options={"quantize": "bnb-4bit"})
    message = str(caught.value)
    assert "\n" not in message and "runs on CUDA only" in message and "GGUF" in message
    with pytest.raises(InputError, match="option quantize"):
        inpaint(picture, tiny_dit_folders["flux-fill"], options={"quantize": "fp3"})


def test_outpaint_masked_crop_and_masked_content_work_for_transformer_families(picture, tiny_dit_folders):
    image, mask = picture
    h, w = image.shape[:2]
    fill = str(tiny_dit_folders["flux-fill"])
    wide = canvaslab.outpaint(image, right=24, bottom=8, model=fill, steps=2, seed=0, fill="matched-noise")
    assert wide.image.shape == (h + 8, w + 24, 3)
    np.testing.assert_array_equal(wide.image[:h, :w][~wide.mask[:h, :w]], image[~wide.mask[:h, :w]])
    crop = canvaslab.inpaint(image, mask, model=fill, steps=2, seed=0, area="masked", padding=8)
    np.testing.assert_array_equal(crop.image[~mask], image[~mask])
    assert "Inpaint area: Only masked" in crop.parameters
    noisy = inpaint(picture, tiny_dit_folders["sd3-txt2img"], strength=0.6, masked_content="latent-noise")
    np.testing.assert_array_equal(noisy.image[~mask], image[~mask])
    assert not np.array_equal(noisy.image, inpaint(picture, tiny_dit_folders["sd3-txt2img"], strength=0.6).image)
    with pytest.raises(InputError, match="needs a Stable Diffusion-style VAE"):
        inpaint(picture, tiny_dit_folders["qwen-image"], strength=0.6, masked_content="latent-noise")


def test_rows_and_a_grid_over_families(picture, tiny_dit_folders, tmp_path):
    """An XYZ grid whose cells are different families: each cell runs its own model with its own multiple."""
    from canvaslab.tasks.requests import InpaintRequest
    from canvaslab.tasks.xyz import base_request, cell_requests, parse_axis

    x = parse_axis(f"model={tiny_dit_folders['flux-fill']},{tiny_dit_folders['z-image']}", InpaintRequest)
    cells = cell_requests(base_request(InpaintRequest, {"prompt": "a cat", "steps": 2}, x, None), x, None)
    image, mask = picture
    for cell in cells.values():
        result = canvaslab.inpaint(image, mask, request=cell.model_copy(update={"seed": 1}))
        np.testing.assert_array_equal(result.image[~mask], image[~mask])


def test_turbo_models_default_to_one_step_without_guidance(tiny_folders, tmp_path):
    """SD-Turbo / SDXL Turbo (named so, trailing timesteps in their scheduler config) ran SD's 20 steps at
    CFG 7.5 when the request left them unset; their cards say 1 step, no guidance."""
    import json
    import shutil

    folder = tmp_path / "sdxl-turbo-local"
    shutil.copytree(tiny_folders["sdxl-txt2img"], folder)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "timestep_spacing": "trailing"}))
    turbo = canvaslab.generate(prompt="x", model=str(folder), size=64, seed=1)
    assert "Steps: 1, Sampler: model default, CFG scale: 0.0," in turbo.parameters
    plain = canvaslab.generate(prompt="x", model=str(tiny_folders["sdxl-txt2img"]), size=64, seed=1, steps=1)
    assert "CFG scale: 7.5" in plain.parameters  # a plain SDXL keeps SD's defaults


def test_nan_output_is_an_error_not_a_black_image(picture, tiny_dit_folders):
    """Qwen-Image's schedule (shift_terminal) divides by zero with one step: the pipeline returns NaN, which
    the uint8 cast turned into black pixels without a word."""
    from canvaslab.errors import EngineError

    with pytest.raises(EngineError, match="produced NaN pixels after 1 step .*use more steps"):
        inpaint(picture, tiny_dit_folders["qwen-image"], steps=1)


def test_frames_with_a_transformer_edit_model_is_one_line(tiny_dit_folders, tmp_path, photo):
    from conftest import write_png

    for i in range(2):
        write_png(tmp_path / "frames" / f"{i}.png", photo[:64, :64])
    with pytest.raises(InputError, match="edits one image at a time, got 2 frames"):
        canvaslab.edit(frames=tmp_path / "frames", instruction="x", model=str(tiny_dit_folders["flux-kontext"]), steps=1)
