"""Multi-frame editing (`edit --frames DIR`): N frames + an instruction -> one frame, on tiny offline models.

The tiny N-frame model is the tiny InstructPix2Pix model with its UNet widened to 4 + 4N channels
(`tiny.save_frames_folder`), saved as a diffusers folder and loaded through `load_pipeline` like a
trained one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

import torch  # noqa: E402

import canvaslab  # noqa: E402
from canvaslab.core.image import load_image  # noqa: E402
from canvaslab.engines.diffusion import models  # noqa: E402
from canvaslab.engines.diffusion.frames import StableDiffusionFrameEditPipeline  # noqa: E402
from canvaslab.errors import EngineError, InputError  # noqa: E402
from canvaslab.tasks.edit import frame_files  # noqa: E402
from canvaslab.tasks.requests import EditRequest  # noqa: E402
from conftest import write_png  # noqa: E402

from . import tiny  # noqa: E402

SIZE = (45, 70)  # height, width: not multiples of 8, so alignment and exact restore are exercised


@pytest.fixture(scope="module")
def three_frame_model(tmp_path_factory):
    """A 16-channel UNet: noisy latents + 3 frames."""
    return tiny.save_frames_folder(tmp_path_factory.mktemp("frames-model") / "f3", frames=3)


@pytest.fixture(scope="module")
def clips(photo):
    """Three different 70x45 crops of the photo (a short "video")."""
    height, width = SIZE
    return [np.ascontiguousarray(photo[y:y + height, x:x + width]) for y, x in ((0, 0), (20, 40), (50, 75))]


def write_frames(folder, frames, names=None):
    names = names or [f"{i:02d}.png" for i in range(len(frames))]
    for name, frame in zip(names, frames):
        write_png(folder / name, frame)
    return folder


def edit(frames_dir, model, **params):
    return canvaslab.edit(frames=frames_dir, **{"instruction": "drop the cup", "model": str(model), "steps": 2,
                                                "seed": 1, **params})


def run_cli(*args):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


# -- the pipeline ------------------------------------------------------------------------------


def test_load_pipeline_picks_the_frame_pipeline_for_4_plus_4n_channels(three_frame_model):
    pipe = models.load_pipeline(three_frame_model, task="edit", device="cpu")
    assert isinstance(pipe, StableDiffusionFrameEditPipeline) and pipe.condition_frames == 3
    assert models.load_pipeline(three_frame_model, task="edit", device="cpu") is pipe  # cached like the others
    with pytest.raises(ValueError, match="takes 3 input frames .*16-channel UNet.*got 2"):
        pipe(prompt="x", image=[np.zeros((16, 16, 3), np.uint8)] * 2, num_inference_steps=1, output_type="np")


def test_a_single_file_multi_frame_checkpoint_runs_with_a_config_folder(tmp_path, clips, tiny_folders, three_frame_model):
    """An original-layout .safetensors (how A1111/ComfyUI share models) takes its configs from the
    InstructPix2Pix folder and its 16 input channels from the weights."""
    from safetensors.torch import save_file

    checkpoint = tmp_path / "f3.safetensors"
    save_file(tiny.single_file_state_dict(tiny.build_frames_pipeline(3)), str(checkpoint))
    folder = write_frames(tmp_path / "clip", clips)
    from_file = edit(folder, checkpoint, options={"config": str(tiny_folders["sd-pix2pix"])})
    np.testing.assert_array_equal(from_file.image, edit(folder, three_frame_model).image)


def test_sdxl_multi_frame_models_are_refused_in_one_line():
    info = models.ModelInfo("sdxl", "edit", 16, "epsilon", 1024, 3)
    with pytest.raises(EngineError, match="SDXL model editing from 3 conditioning frames") as caught:
        models.pipeline_class_name(info, "edit")
    assert "\n" not in str(caught.value)
    assert models.pipeline_class_name(models.ModelInfo("sd1", "edit", 84, "epsilon", 512, 20), "edit") == (
        "StableDiffusionFrameEditPipeline"
    )


def test_one_frame_through_the_frame_pipeline_is_bit_identical_to_instruct_pix2pix(clips, tiny_folders):
    stock = models.load_pipeline(tiny_folders["sd-pix2pix"], task="edit", device="cpu")
    frames = StableDiffusionFrameEditPipeline.from_pipe(stock)
    frame = Image.fromarray(np.ascontiguousarray(clips[0][:40, :64]))
    common = dict(prompt="make it winter", num_inference_steps=2, image_guidance_scale=1.7, output_type="np")
    a = stock(image=frame, generator=torch.Generator().manual_seed(3), **common).images
    b = frames(image=[frame], generator=torch.Generator().manual_seed(3), **common).images
    np.testing.assert_array_equal(a, b)


def test_the_pipeline_equals_a_hand_written_three_way_guidance_loop(clips, three_frame_model):
    """The conditioning contract, spelled out: noisy latents | frame 1 | frame 2 | frame 3 latents (unscaled
    latent modes of the frames in [-1, 1]), and InstructPix2Pix's guidance with all frames zeroed."""
    from diffusers import DDIMScheduler

    pipe = models.load_pipeline(three_frame_model, task="edit", device="cpu")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # no noise inside the steps
    frames = [np.ascontiguousarray(clip[:40, :64]) for clip in clips]
    guidance, image_guidance, steps, seed = 6.0, 1.8, 3, 11
    expected = pipe(prompt="drop the cup", image=[Image.fromarray(f) for f in frames], num_inference_steps=steps, guidance_scale=guidance,
                    image_guidance_scale=image_guidance, generator=torch.Generator().manual_seed(seed),
                    output_type="latent").images

    with torch.no_grad():
        def text(prompt):
            ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            return pipe.text_encoder(ids)[0]

        embeds = torch.cat([text("drop the cup"), text(""), text("")])
        pixels = [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0 for f in frames]
        condition = torch.cat([pipe.vae.encode(p).latent_dist.mode() for p in pixels], dim=1)  # (1, 12, 5, 8)
        condition = torch.cat([condition, condition, torch.zeros_like(condition)])
        scheduler = pipe.scheduler
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn((1, 4, 5, 8), generator=generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            noisy = scheduler.scale_model_input(torch.cat([latents] * 3), t)
            out = pipe.unet(torch.cat([noisy, condition], dim=1), t, encoder_hidden_states=embeds).sample
            with_text, frames_only, neither = out.chunk(3)
            noise = neither + guidance * (with_text - frames_only) + image_guidance * (frames_only - neither)
            latents = scheduler.step(noise, t, latents).prev_sample
    # Float noise only: the pipeline's frames are channels-last in memory, which picks other conv kernels,
    # and guidance 6 amplifies the last-digit differences. A wrong layout or guidance is off by ~1.
    torch.testing.assert_close(expected, latents, atol=5e-5, rtol=0)
    assert latents.abs().max() > 0.1  # not trivially zero


# -- the task (Python API) ---------------------------------------------------------------------


def test_frames_edit_keeps_the_frame_size_and_a_seed_repeats(tmp_path, clips, three_frame_model):
    folder = write_frames(tmp_path / "clip", clips)
    a, b = edit(folder, three_frame_model), edit(folder, three_frame_model)
    assert a.image.shape == clips[0].shape and a.mask.all() and a.alpha is None
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, edit(folder, three_frame_model, seed=2).image)
    assert edit(folder, three_frame_model, align="pad").image.shape == clips[0].shape


def test_every_frame_conditions_the_result(tmp_path, clips, three_frame_model):
    base = edit(write_frames(tmp_path / "base", clips), three_frame_model).image
    for index in range(3):
        changed = list(clips)
        changed[index] = np.ascontiguousarray(255 - clips[index])
        other = edit(write_frames(tmp_path / f"changed{index}", changed), three_frame_model).image
        assert np.abs(other.astype(int) - base.astype(int)).mean() > 0.5, f"frame {index + 1} had no effect"


def test_frames_are_read_in_natural_name_order_and_order_matters(tmp_path, clips, three_frame_model):
    natural = write_frames(tmp_path / "natural", clips, ["8.png", "9.png", "10.png"])  # as text: 10, 8, 9
    assert [p.name for p in frame_files(natural)] == ["8.png", "9.png", "10.png"]
    padded = write_frames(tmp_path / "padded", clips)
    swapped = write_frames(tmp_path / "swapped", [clips[1], clips[0], clips[2]])
    reference = edit(padded, three_frame_model).image
    np.testing.assert_array_equal(edit(natural, three_frame_model).image, reference)
    assert not np.array_equal(edit(swapped, three_frame_model).image, reference)


def test_one_frame_with_an_instruct_pix2pix_model_equals_the_image_edit(tmp_path, clips, tiny_folders):
    path = write_png(tmp_path / "one" / "00.png", clips[0])
    via_frames = edit(path.parent, tiny_folders["sd-pix2pix"])
    via_image = canvaslab.edit(path, instruction="drop the cup", model=str(tiny_folders["sd-pix2pix"]), steps=2, seed=1)
    np.testing.assert_array_equal(via_frames.image, via_image.image)


def test_the_recipe_records_the_folder_and_each_file_and_replays(tmp_path, clips, three_frame_model, monkeypatch):
    folder = write_frames(tmp_path / "clip", clips)
    monkeypatch.chdir(tmp_path)
    result = edit("clip", three_frame_model)  # relative: the recipe must still find it from elsewhere
    recorded = result.recipe["inputs"]["frames"]
    assert recorded["path"] == str(folder.resolve()) == result.recipe["request"]["frames"]
    assert [f["path"] for f in recorded["files"]] == [str(p.resolve()) for p in frame_files(folder)]
    assert all(len(f["sha256"]) == 64 for f in recorded["files"])
    assert result.recipe["size"] == [SIZE[1], SIZE[0]] and result.parameters.startswith("drop the cup\n")
    monkeypatch.chdir(tmp_path.parent)
    again = canvaslab.edit(request=EditRequest.model_validate(result.recipe["request"]))
    np.testing.assert_array_equal(again.image, result.image)


# -- errors ------------------------------------------------------------------------------------


def test_wrong_frame_count_names_model_channels_and_folder(tmp_path, clips, three_frame_model):
    folder = write_frames(tmp_path / "two", clips[:2])
    with pytest.raises(InputError, match=r"takes 3 input frames \(16-channel UNet\); .*two has 2 images") as caught:
        edit(folder, three_frame_model)
    assert "\n" not in str(caught.value)


def test_frames_of_different_sizes_are_refused(tmp_path, clips, three_frame_model):
    frames = [clips[0], clips[1], clips[2][:40]]
    with pytest.raises(InputError, match="all frames must have one size: 00.png is 70x45 but 02.png is 70x40"):
        edit(write_frames(tmp_path / "mixed", frames), three_frame_model)


def test_empty_or_missing_frames_folder(tmp_path, three_frame_model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a frame")
    with pytest.raises(InputError, match="holds no images"):
        edit(tmp_path / "empty", three_frame_model)
    with pytest.raises(InputError, match="does not exist"):
        edit(tmp_path / "nowhere", three_frame_model)


def test_frames_and_an_image_together_are_refused(tmp_path, clips, three_frame_model):
    folder = write_frames(tmp_path / "clip", clips)
    with pytest.raises(InputError, match="either an image or frames=DIR"):
        canvaslab.edit(clips[0], frames=folder, instruction="x", model=str(three_frame_model))


def test_a_multi_frame_model_without_frames_asks_for_them(clips, three_frame_model):
    with pytest.raises(InputError, match=r"edits from 3 input frames \(16-channel UNet\).*--frames DIR"):
        canvaslab.edit(clips[0], instruction="x", model=str(three_frame_model), steps=2)


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_frames_rows_grid_and_recipe(tmp_path, clips, three_frame_model):
    folder = write_frames(tmp_path / "clip", clips)
    out, grid = tmp_path / "next.png", tmp_path / "grid.png"
    done = run_cli("edit", "--frames", folder, "--instruction", "drop the cup", "--model", three_frame_model,
                   "--steps", 2, "--seed", 4, "--rows", 2, "--grid", grid, "-o", out)
    assert done.exit_code == 0, done.output
    second = tmp_path / "next-seed5.png"
    assert load_image(out).size == load_image(second).size == (SIZE[1], SIZE[0])
    assert load_image(grid).size == (2 * SIZE[1] + 8, 2 * SIZE[0] + 8)  # last frame | result, two seed rows
    api = edit(folder, three_frame_model, seed=4)
    np.testing.assert_array_equal(load_image(out).rgb, api.image)
    meta = json.loads(run_cli("--json", "info", out).stdout)
    assert meta["recipe"]["request"]["frames"] == str(folder.resolve())
    assert len(meta["recipe"]["inputs"]["frames"]["files"]) == 3


def test_cli_default_output_name(tmp_path, clips, three_frame_model, monkeypatch):
    write_frames(tmp_path / "clip", clips)
    monkeypatch.chdir(tmp_path)
    done = run_cli("edit", "--frames", "clip", "--instruction", "x", "--model", three_frame_model, "--steps", 1)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "clip-edit.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["IMAGE"], "either an IMAGE or --frames DIR"),
        (["--images", "IMAGES"], "--images DIR edits a folder of single images"),
        (["--out", "OUT"], "--out is for folders of single images"),
        (["--grid-x", "steps=1,2"], "--grid-x/--grid-y"),
    ],
)
def test_cli_frames_conflicts_exit_2_in_one_line(tmp_path, clips, three_frame_model, extra, message):
    folder = write_frames(tmp_path / "clip", clips)
    image = write_png(tmp_path / "one.png", clips[0])
    extra = [{"IMAGE": image, "IMAGES": tmp_path, "OUT": tmp_path / "out"}.get(a, a) for a in extra]
    done = run_cli("edit", *extra, "--frames", folder, "--instruction", "x", "--model", three_frame_model)
    assert done.exit_code == 2 and message in done.output and "Traceback" not in done.output


def test_cli_wrong_count_and_missing_frames_exit_2(tmp_path, clips, three_frame_model):
    folder = write_frames(tmp_path / "clip", clips + [clips[0]])
    done = run_cli("edit", "--frames", folder, "--instruction", "x", "--model", three_frame_model, "-o", tmp_path / "o.png")
    assert done.exit_code == 2 and "takes 3 input frames" in done.output and "has 4 images" in done.output
    image = write_png(tmp_path / "one.png", clips[0])
    done = run_cli("edit", image, "--instruction", "x", "--model", three_frame_model, "-o", tmp_path / "o.png")
    assert done.exit_code == 2 and "--frames DIR" in done.output
    assert not (tmp_path / "o.png").exists()
