"""Soft inpainting (--soft: grey mask levels as per-pixel change strength, engines/diffusion/soft.py) on tiny
offline models: the step rule on a stand-in pipeline, the latent layouts against each pipeline's own unpacking,
and through canvaslab.inpaint the pixel guarantees (level 0 bit-identical, change ordered by level, a 0/255
mask giving exactly the binary inpaint, determinism) for SD 1.x (9- and 4-channel), SDXL and every DiT family
with an inpainting pipeline; refusals in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402

import canvaslab  # noqa: E402
from canvaslab.core.mask import grow  # noqa: E402
from canvaslab.engines import Generation, get_engine  # noqa: E402
from canvaslab.engines.diffusion import soft  # noqa: E402
from canvaslab.engines.diffusion.engine import prepared_pipeline  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402
from conftest import write_png  # noqa: E402

STEPS = 8
BOX = (slice(16, 48), slice(16, 64))  # the soft region of a 64x80 picture: whole 16 px tokens for every family

# tiny model -> which fixture holds it; the families the brief names first, then every other DiT inpainting one
SD_KINDS = ["sd-inpaint", "sd-txt2img", "sdxl-inpaint"]
DIT_KINDS = ["flux-txt2img", "flux-fill", "sd3-txt2img", "z-image", "qwen-image", "flux2-klein", "flux-kontext"]


@pytest.fixture(scope="module")
def picture(photo):
    """64x80: a multiple of 16, so every family works on it as it is (geometry is other tests' business)."""
    return np.ascontiguousarray(photo[20:84, 40:120])


@pytest.fixture
def folder(request, tiny_folders, tiny_dit_folders):
    kind = request.param
    return tiny_folders[kind] if kind in SD_KINDS else tiny_dit_folders[kind]


def box_levels(picture, level):
    levels = np.zeros(picture.shape[:2], np.float32)
    levels[BOX] = level
    return levels


def run(picture, folder, mask, **params):
    params = {"model": str(folder), "steps": STEPS, "seed": 1, "prompt": "a cat", **params}
    return canvaslab.inpaint(picture, mask, **params)


def change(result, picture, where):
    return float(np.abs(result.image.astype(int) - picture.astype(int))[where].mean())


# -- the step rule, on a stand-in pipeline ---------------------------------------------------------


class StandIn:
    """What the callback reads from a pipeline: its count of timesteps and a scheduler. `scale_noise` marks
    a value with the timestep it was noised to, so the test sees which step's level each pinned cell got."""

    def __init__(self, steps, schedule):
        self.num_timesteps = steps
        self.scheduler = self
        self.timesteps = torch.tensor(schedule, dtype=torch.float32)

    def scale_noise(self, sample, timestep, noise):
        return sample + noise * 1000 + timestep


@pytest.mark.parametrize("steps", [1, 4, 8, 20])
def test_a_cell_at_level_m_is_free_for_the_last_floor_m_n_steps_and_else_holds_the_noised_original(steps):
    levels = torch.tensor([0.0, 0.05, 0.125, 0.3, 0.5, 0.75, 0.99, 1.0])
    original = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8) * 0.01
    schedule = [990.0, 980.0] + [900.0 - 100 * k for k in range(steps)]  # strength < 1: the run is the last `steps`
    pipe, callback = StandIn(steps, schedule), soft.pinning(original, levels.view(1, 1, 1, 8), torch.ones(1, 1, 1, 8))
    free = ((levels >= 1) | (levels == 0)).float()  # step 0 starts from the pipeline's own latents
    for index in range(steps):
        denoised = torch.full((1, 1, 1, 8), -7.0)  # whatever the model made of every cell
        latents = callback(pipe, index, None, {"latents": denoised})["latents"].view(8)
        following = index + 1
        if following < steps:
            pinned = latents != -7.0
            free += (~pinned).float()
            expected = original.view(8) + 1000 + (900 - 100 * following)  # noised to the next step's timestep
            np.testing.assert_allclose(latents[pinned], expected[pinned])
        else:  # cells never freed end as the clean original; everything else keeps what the model made
            never = (levels > 0) & (torch.floor(levels * steps + 1e-4) == 0)
            np.testing.assert_array_equal(latents[never], original.view(8)[never])
            assert (latents[~never] == -7.0).all()
    # level 0 is the pipeline's own business (kept by its blending, or discarded by the composite): never pinned
    expected_free = torch.where(levels > 0, torch.floor(levels * steps + 1e-4), torch.tensor(float(steps)))
    np.testing.assert_array_equal(free, expected_free)


def test_a_binary_mask_installs_no_callback(picture, tiny_folders):
    pipe = prepared_pipeline(Generation(model=str(tiny_folders["sd-inpaint"])), "inpaint", config=None,
                             default_model="sd15-inpaint")
    assert soft.soft_callback(pipe, picture, box_levels(picture, 1.0), seed=1) is None
    assert soft.soft_callback(pipe, picture, box_levels(picture, 0.5), seed=1) is not None


# -- latent layouts: checked with each pipeline's own unpacking ---------------------------------


def unpacked(pipe, latents, height, width):
    """A pipeline's `output_type="latent"` answer as (C, h, w), undoing its packing with its own code."""
    if latents.ndim == 3:  # packed tokens (FLUX.1, Kontext, Qwen-Image); FLUX.2 unpacks its own answer
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    if latents.ndim == 5:  # Qwen-Image: (B, C, 1, h, w)
        latents = latents[:, :, 0]
    return latents[0]


@pytest.mark.parametrize("folder", SD_KINDS[:1] + DIT_KINDS, indirect=True)
def test_cells_below_one_step_end_as_the_original_latents_and_free_ones_do_not(folder, picture):
    """Left half at level 0.05 (below 1/8: never freed), right half free (level 1): in the latents the
    pipeline hands back, unpacked by its own code, the left half equals that of a run where everything is
    at 0.05, the right half differs. A wrong packing of the levels would pin the wrong latent pixels."""
    pipe = prepared_pipeline(Generation(model=str(folder)), "inpaint", config=None, default_model="sd15-inpaint")
    height, width = picture.shape[:2]
    half = np.full((height, width), 0.05, np.float32)
    half[:, width // 2:] = 1.0
    everywhere = np.full((height, width), 0.05, np.float32)
    from PIL import Image

    own_size = {"max_area": height * width, "_auto_resize": False} if "Kontext" in type(pipe).__name__ else {}

    def latents(levels):
        call = soft.soft_callback(pipe, picture, levels, seed=1)
        out = pipe(prompt="a cat", image=Image.fromarray(picture), mask_image=Image.fromarray(np.full((height, width), 255, np.uint8)),
                   height=height, width=width, strength=1.0, num_inference_steps=STEPS, output_type="latent",
                   generator=torch.Generator().manual_seed(0), callback_on_step_end=call, **own_size).images
        return unpacked(pipe, out, height, width)

    split, reference = latents(half), latents(everywhere)
    cells = split.shape[-1] // 2
    torch.testing.assert_close(split[..., :cells], reference[..., :cells], rtol=0, atol=0)
    assert (split[..., cells:] - reference[..., cells:]).abs().mean() > 1e-3


# -- through canvaslab.inpaint ---------------------------------------------------------------------


@pytest.mark.parametrize("folder", SD_KINDS + DIT_KINDS, indirect=True)
def test_level_0_is_untouched_and_change_grows_with_the_level(folder, picture):
    changes = {}
    for level in (0.25, 0.5, 1.0):
        result = run(picture, folder, box_levels(picture, level), soft=True)
        outside = box_levels(picture, 1.0) == 0
        np.testing.assert_array_equal(result.image[outside], picture[outside])
        changes[level] = change(result, picture, BOX)
    assert 1.3 * changes[0.25] < changes[0.5] and 1.3 * changes[0.5] < changes[1.0], changes


@pytest.mark.parametrize("folder", SD_KINDS + DIT_KINDS, indirect=True)
def test_a_0_255_mask_with_soft_is_exactly_the_binary_inpaint(folder, picture):
    mask = box_levels(picture, 1.0) > 0
    binary = run(picture, folder, mask)
    np.testing.assert_array_equal(run(picture, folder, mask, soft=True).image, binary.image)
    np.testing.assert_array_equal(run(picture, folder, mask.astype(np.float32), soft=True).image, binary.image)


@pytest.mark.parametrize("folder", ["sd-inpaint", "flux-txt2img", "z-image"], indirect=True)
def test_same_seed_same_pixels_other_seed_other_pixels(folder, picture):
    gradient = box_levels(picture, 1.0) * np.linspace(0.1, 0.9, picture.shape[1], dtype=np.float32)[None]
    first = run(picture, folder, gradient, soft=True)
    np.testing.assert_array_equal(run(picture, folder, gradient, soft=True).image, first.image)
    assert not np.array_equal(run(picture, folder, gradient, soft=True, seed=2).image, first.image)


def test_grey_mask_file_polarity_recipe_and_a1111_parameters(picture, tiny_folders, tmp_path):
    """A grey PNG read white or black (inverted levels): level 0 untouched either way; the recipe and the
    A1111 text say soft."""
    grey = np.zeros(picture.shape[:2], np.uint8)
    grey[BOX] = 128
    path = write_png(tmp_path / "grey.png", grey)
    white = run(picture, tiny_folders["sd-inpaint"], str(path), soft=True)
    untouched = grey == 0
    np.testing.assert_array_equal(white.image[untouched], picture[untouched])
    black = run(picture, tiny_folders["sd-inpaint"], str(path), soft=True, mask_mode="black")
    np.testing.assert_array_equal(black.mask, np.ones_like(untouched))  # black: grey 0 means level 1 there
    assert change(black, picture, untouched) > 1.5 * change(black, picture, ~untouched)  # level 1 vs level ~0.5
    assert white.recipe["request"]["soft"] is True and "Soft inpainting enabled: True" in white.parameters
    assert "Soft inpainting" not in run(picture, tiny_folders["sd-inpaint"], str(path)).parameters


def test_the_images_own_transparency_as_levels(picture, tiny_folders):
    """--mask-mode alpha without a mask file: alpha 255 is level 0 (untouched), alpha 128 about half."""
    alpha = np.full(picture.shape[:2], 255, np.uint8)
    alpha[BOX] = 128
    result = run(np.dstack([picture, alpha]), tiny_folders["sd-inpaint"], None, soft=True, mask_mode="alpha")
    opaque = alpha == 255
    np.testing.assert_array_equal(result.image[opaque], picture[opaque])
    assert (result.alpha[BOX] == 255).all() and change(result, picture, BOX) > 5
    full = run(picture, tiny_folders["sd-inpaint"], ~opaque)
    assert change(result, picture, BOX) < 0.7 * change(full, picture, BOX)


@pytest.mark.parametrize("params", [{"area": "masked", "padding": 8}, {"tile": 48}, {"grow": 4, "feather": 3},
                                    {"strength": 0.6}, {"size": 96}])
def test_soft_follows_crops_tiles_grow_feather_strength_and_scaling(params, picture, tiny_folders):
    levels = box_levels(picture, 0.5)
    result = run(picture, tiny_folders["sd-inpaint"], levels, soft=True, **params)
    reach = grow(levels > 0, params.get("grow", 0))
    np.testing.assert_array_equal(result.image[~reach], picture[~reach])
    full = run(picture, tiny_folders["sd-inpaint"], levels > 0, **params)
    assert 0.2 < change(result, picture, BOX) / change(full, picture, BOX) < 0.8


def test_cli_soft_flag_and_replay(picture, tiny_folders, tmp_path):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    image, mask = write_png(tmp_path / "in.png", picture), tmp_path / "mask.png"
    levels = (box_levels(picture, 1.0) * np.linspace(0, 255, picture.shape[1])[None]).astype(np.uint8)
    write_png(mask, levels)
    out = tmp_path / "out.png"
    done = CliRunner().invoke(app, [str(a) for a in ("inpaint", image, "--mask", mask, "--soft", "--model",
                                                     tiny_folders["sd-inpaint"], "--steps", 4, "--seed", 3, "-o", out)])
    assert done.exit_code == 0, done.output
    meta = json.loads(CliRunner().invoke(app, ["--json", "info", str(out)]).stdout)
    assert meta["recipe"]["request"]["soft"] is True
    replay = CliRunner().invoke(app, ["replay", str(out), "-o", str(tmp_path / "again.png"), "--check"])
    assert replay.exit_code == 0, replay.output


# -- refusals ----------------------------------------------------------------------------------


def one_line_error(call):
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("engine", ["patchmatch", "telea", "ns", "unified"])
def test_engines_without_a_denoising_loop_refuse_soft(engine, picture):
    message = one_line_error(lambda: canvaslab.inpaint(picture, box_levels(picture, 0.5), soft=True, engine=engine))
    assert message.startswith(f"--soft does not apply to the {engine} engine") and "--engine diffusion" in message


def test_soft_with_a_threshold_and_bad_float_masks_are_refused(picture, tiny_folders):
    model = str(tiny_folders["sd-inpaint"])
    assert "--threshold" in one_line_error(lambda: canvaslab.inpaint(picture, "x.png", soft=True, threshold=100, model=model))
    assert "[0, 1]" in one_line_error(lambda: canvaslab.inpaint(picture, box_levels(picture, 2.0), soft=True, model=model))
    assert "dtype float32" in one_line_error(lambda: canvaslab.inpaint(picture, box_levels(picture, 0.5), model=model))


def test_qwen_image_edit_refuses_soft_in_one_line(picture, tiny_dit_folders, monkeypatch):
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_inpaint

    monkeypatch.setattr(pipeline_qwenimage_edit_inpaint, "calculate_dimensions", lambda area, ratio: (64, 64, None))
    message = one_line_error(lambda: run(picture, tiny_dit_folders["qwen-image-edit"], box_levels(picture, 0.5), soft=True))
    assert message.startswith("--soft is not supported for QwenImageEditInpaintPipeline, which works at a size of its own")


def test_a_pipeline_outside_the_table_is_refused(picture):
    class SomeNewInpaintPipeline:
        pass

    message = one_line_error(lambda: soft.soft_callback(SomeNewInpaintPipeline(), picture, box_levels(picture, 0.5), seed=1))
    assert "SomeNewInpaintPipeline" in message and "leave --soft out" in message


def test_the_engine_gets_levels_at_its_working_size(picture, tiny_folders):
    """The raw engine output (before the composite): a level below 1/steps is never freed, so its pixels are
    the VAE's reconstruction of the original, the same as at any other such level; level 1 is not."""
    engine = get_engine("diffusion")
    options = engine.parse_options({})
    mask = box_levels(picture, 1.0) > 0

    def raw(level):
        generation = Generation(model=str(tiny_folders["sd-inpaint"]), steps=STEPS, prompt="a cat",
                                strength_map=box_levels(picture, level))
        return engine.inpaint(picture, mask, seed=1, options=options, generation=generation)

    np.testing.assert_array_equal(raw(0.05), raw(0.1))
    assert np.abs(raw(1.0).astype(int) - raw(0.05).astype(int))[BOX].mean() > 5
