"""The trainer on tiny models: every objective and mode runs, loss falls, resume is exact, exports load.

Models are tiny SD/SDXL pipelines saved as diffusers folders and loaded through the same public
loader as real checkpoints; data comes from `canvaslab data mini`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import HAVE_STACK, base_config

pytestmark = pytest.mark.skipif(not HAVE_STACK, reason="the training stack (torch, diffusers, peft, accelerate) is not installed")

if HAVE_STACK:
    import torch

    from canvaslab.errors import EngineError

    from canvaslab.train.trainer import train

    from .helpers import fixed_loss, load_unet, run


# -- learning ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "lr", "factor"), [("full", 1e-3, 0.8), ("partial", 2e-2, 0.95), ("lora", 1e-2, 0.95)])
def test_loss_falls_when_overfitting_a_tiny_batch(bases, mini, tmp_path, mode, lr, factor):
    config = base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "run", export="diffusers",
                         train={"mode": mode, "learning_rate": lr, "batch_size": 4, "max_steps": 30},
                         data={"buckets": False}, masks={"p_everything": 0.0})
    report = run(config)
    assert report.steps == 30 and len(report.losses) == 30
    before = fixed_loss(config)
    after = fixed_loss(config, load_unet(tmp_path / "run" / "final"))
    assert after < factor * before, (before, after)


def test_partial_mode_changes_attention_projections_only(bases, mini, tmp_path):
    config = base_config(bases["sd-txt2img"], mini["inpaint-folder"], tmp_path / "run", export="diffusers",
                         train={"mode": "partial", "max_steps": 2})
    run(config)
    before = load_unet(bases["sd-txt2img"]).state_dict()
    after = load_unet(tmp_path / "run" / "final").state_dict()
    assert after["conv_in.weight"].shape[1] == 9  # widened for inpainting, and trained
    changed = {name for name in before if name.startswith("conv_in") or not torch.equal(before[name], after[name])}
    assert {n for n in changed if not n.startswith("conv_in")} and all(
        (".attn1." in n or ".attn2." in n) and any(p in n for p in (".to_q.", ".to_k.", ".to_v.", ".to_out.0."))
        for n in changed if not n.startswith("conv_in")
    )


# -- exact resume --------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["inpaint", "edit"])
def test_stopping_and_resuming_continues_exactly(bases, mini, tmp_path, objective):
    """A run stopped after a checkpoint and resumed gives the very losses of an uninterrupted run:
    model, optimizer, LR schedule, EMA, LoRA dropout RNG and data position all restored."""
    base, data = (bases["sd-txt2img"], mini["inpaint-folder"]) if objective == "inpaint" else (bases["sd-pix2pix"], mini["edit-jsonl"])
    sections = dict(objective=objective, train={
        "max_steps": 6, "gradient_accumulation": 2, "lr_scheduler": "cosine", "warmup_steps": 2,
        "ema": {"enabled": True, "decay": 0.9}, "lora": {"dropout": 0.2}, "noise_offset": 0.05, "snr_gamma": 5.0,
    }, data={"random_flip": True, "random_crop": True, "caption_dropout": 0.2}, checkpoints={"every": 3})
    whole = run(base_config(base, data, tmp_path / "whole", **sections))
    first = run(base_config(base, data, tmp_path / "parts", **sections), stop_after=3)
    assert first.losses == whole.losses[:3]
    assert (tmp_path / "parts" / "checkpoints" / "step_000003" / "trainer_state.json").is_file()
    second = run(base_config(base, data, tmp_path / "parts", resume="latest", **sections))
    assert second.resumed_from and second.resumed_from.endswith("step_000003")
    assert second.losses == whole.losses[3:]  # bit for bit
    # 8 samples, batch 2, accumulation 2: 2 steps per epoch, so the resume also crossed an epoch boundary.


def test_only_the_newest_checkpoints_are_kept_and_unfinished_ones_ignored(bases, mini, tmp_path):
    config = base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "run",
                         checkpoints={"every": 1, "keep": 2}, train={"max_steps": 4})
    run(config)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_000003", "step_000004"]
    (root / "step_000009").mkdir()  # killed while saving: no trainer_state.json
    from canvaslab.train.checkpoints import resolve_resume

    assert resolve_resume(tmp_path / "run", "latest") == root / "step_000004"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "canvaslab", *args]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_continues_exactly(bases, mini, tmp_path):
    """`canvaslab train` gets SIGTERM from outside: the step finishes, a checkpoint is saved, exit 143.
    Resuming from that checkpoint gives the losses of an unbroken run of the same config, bit for bit."""
    from canvaslab.train.config import load_config

    out = tmp_path / "run"
    args = ["train", "inpaint", f"model.base={bases['sd-inpaint']}", f"data.path={mini['inpaint-folder']}",
            "data.resolution=64", "train.batch_size=2", "log.every=1", "log.trackers=[]", "validation.count=0",
            "export=none", "checkpoints.every=1000", f"output={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_cli(*args, "train.max_steps=100000"), stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:  # wait until training is really under way
            if line.startswith("step 2/"):
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 143, rest
    finally:
        proc.kill()
    assert "stopped by SIGTERM" in rest
    state = json.loads(next((out / "checkpoints").glob("step_*/trainer_state.json")).read_text())
    stopped_at = state["step"]
    assert stopped_at >= 2
    # The same config in this process (constant LR: max_steps changes nothing before the end).
    overrides = args[2:]
    whole = train(load_config(None, [*overrides, f"output={tmp_path / 'whole'}", f"train.max_steps={stopped_at + 2}"],
                              objective="inpaint"))
    resumed = train(load_config(None, [*overrides, f"train.max_steps={stopped_at + 2}", "resume=latest"],
                                objective="inpaint"))
    assert resumed.resumed_from.endswith(f"step_{stopped_at:06d}")
    assert resumed.losses == whole.losses[stopped_at:]


def test_nan_loss_stops_with_a_clear_message(bases, mini, tmp_path):
    config = base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "run",
                         train={"mode": "full", "learning_rate": 1e30, "max_steps": 50, "max_grad_norm": None})
    with pytest.raises(EngineError, match=r"the loss became (nan|inf) at step \d+; lower train.learning_rate"):
        run(config)


# -- objectives, models, exports ----------------------------------------------------------------------


def _inpaint(model: Path, *, lora: Path | None, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import canvaslab

    return canvaslab.inpaint(image, mask, engine="diffusion", model=str(model), lora=[str(lora)] if lora else [],
                             steps=3, seed=1).image


def test_lora_export_loads_in_the_engine_and_in_plain_diffusers(bases, mini, tmp_path):
    config = base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "run", export="auto",
                         train={"mode": "lora", "learning_rate": 5e-2, "max_steps": 3, "text_encoder": True})
    report = run(config)
    final = Path(report.export)
    assert (final / "pytorch_lora_weights.safetensors").is_file() and not (final / "unet").exists()
    image = np.full((64, 64, 3), 120, np.uint8)
    image[:, 32:] = 30
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    plain = _inpaint(bases["sd-inpaint"], lora=None, image=image, mask=mask)
    tuned = _inpaint(bases["sd-inpaint"], lora=final, image=image, mask=mask)
    assert not np.array_equal(plain, tuned)
    assert np.array_equal(tuned[~mask], image[~mask])

    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    pipe = StableDiffusionInpaintPipeline.from_pretrained(bases["sd-inpaint"], safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def paint():
        return pipe(prompt="a square", image=Image.fromarray(image), mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
                    num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    before = paint()
    pipe.load_lora_weights(final)
    assert pipe.get_list_adapters() == {"unet": ["default_0"], "text_encoder": ["default_0"]}
    assert not np.array_equal(before, paint())


def test_lora_with_alpha_other_than_rank_loads_at_its_trained_scale(bases, mini, tmp_path):
    """A LoRA trained at alpha/rank = 4 (UNet and text encoder), loaded by plain diffusers'
    `load_lora_weights` and by `--lora`, gives what the trained model gives (its merged export):
    the file carries the alphas, so nothing loads it at scale 1."""
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    sections = dict(train={"mode": "lora", "learning_rate": 5e-2, "max_steps": 1, "text_encoder": True,
                           "lora": {"rank": 2, "alpha": 8.0}})
    lora = run(base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "lora", export="lora", **sections))
    merged = run(base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "merged", export="diffusers",
                             **sections))
    assert lora.losses == merged.losses  # one training, two exports
    image = np.full((64, 64, 3), 120, np.uint8)
    image[:, 32:] = 30
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True

    def paint(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe(prompt="a red square", image=Image.fromarray(image),
                    mask_image=Image.fromarray(mask.astype(np.uint8) * 255), num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    def load(folder):
        return StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)

    trained = paint(load(merged.export))
    plain = load(bases["sd-inpaint"])
    base_only = paint(plain)
    plain.load_lora_weights(lora.export)
    assert np.abs(base_only - trained).max() > 0.05  # the LoRA matters, so a wrong scale would show
    np.testing.assert_allclose(paint(plain), trained, atol=2e-4)
    ours = _inpaint(bases["sd-inpaint"], lora=Path(lora.export), image=image, mask=mask)
    reference = _inpaint(Path(merged.export), lora=None, image=image, mask=mask)
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


def test_training_starts_from_the_base_model_not_from_what_inference_left_loaded(bases, mini, tmp_path):
    """Inference keeps the base loaded with its LoRAs and scheduler; a run in the same process (a notebook,
    a sweep) must train the base itself, not the cached pipeline with a LoRA active."""
    from canvaslab.train.components import load_components
    from canvaslab.train.config import validate_config

    config = base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "lora", export="lora",
                         train={"max_steps": 1})
    lora = run(config)
    image = np.full((64, 64, 3), 100, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    import canvaslab

    canvaslab.inpaint(image, mask, engine="diffusion", model=str(bases["sd-inpaint"]), lora=[lora.export],
                      scheduler="euler", steps=2, seed=0)
    components = load_components(validate_config(config), dataset_frames=0)
    assert not getattr(components.unet, "peft_config", None)
    own = json.loads((bases["sd-inpaint"] / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    assert type(components.sample_scheduler).__name__ == own


def _edit(model: Path, lora: Path | None, image: np.ndarray) -> np.ndarray:
    import canvaslab

    return canvaslab.edit(image, instruction="swap the colours", model=str(model), lora=[str(lora)] if lora else [],
                          steps=2, seed=3).image


def test_widened_lora_carries_its_conv_in(bases, mini, tmp_path):
    """A 4-channel base trained into an inpainting model with LoRA: the LoRA file alone, on the plain base,
    gives the trained model; the folder is the widened model for plain diffusers; nothing leaks."""
    from canvaslab.engines.diffusion.lora import WIDENED_PREFIX
    from canvaslab.engines.diffusion.models import resolve_and_detect
    from safetensors import safe_open

    config = base_config(bases["sd-txt2img"], mini["inpaint-folder"], tmp_path / "run", export="auto",
                         train={"mode": "lora", "learning_rate": 5e-2, "max_steps": 3})
    final = Path(run(config).export)
    lora_file = final / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora_file), framework="pt") as handle:
        assert handle.get_tensor(WIDENED_PREFIX + "conv_in.weight").shape[1] == 9
    _, info = resolve_and_detect(str(final))
    assert (info.kind, info.in_channels) == ("inpaint", 9)
    image = np.full((64, 64, 3), 90, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:56] = True
    base_only = _inpaint(bases["sd-txt2img"], lora=None, image=image, mask=mask)
    from_file = _inpaint(bases["sd-txt2img"], lora=lora_file, image=image, mask=mask)
    from_folder = _inpaint(final, lora=final, image=image, mask=mask)
    assert not np.array_equal(base_only, from_file)
    np.testing.assert_allclose(from_file.astype(float), from_folder.astype(float), atol=1)
    # the cached base model is back to 4 channels once the LoRA is not asked for
    assert np.array_equal(_inpaint(bases["sd-txt2img"], lora=None, image=image, mask=mask), base_only)


def test_editing_lora_on_a_plain_base_runs_edit(bases, mini, tmp_path):
    from canvaslab.errors import InputError

    config = base_config(bases["sd-txt2img"], mini["edit-jsonl"], tmp_path / "run", objective="edit", export="lora",
                         train={"mode": "lora", "learning_rate": 5e-2, "max_steps": 2})
    lora_file = Path(run(config).export) / "pytorch_lora_weights.safetensors"
    image = np.full((48, 64, 3), 150, np.uint8)
    edited = _edit(bases["sd-txt2img"], lora_file, image)
    assert edited.shape == image.shape
    with pytest.raises(InputError, match="text-to-image model"):
        _edit(bases["sd-txt2img"], None, image)


def test_multi_frame_edit_model_trains_and_runs_with_edit_frames(bases, mini, tmp_path):
    import canvaslab

    config = base_config(bases["sd-txt2img"], mini["frames-parquet"], tmp_path / "run", objective="edit",
                         export="diffusers", train={"mode": "partial", "max_steps": 2},
                         validation={"count": 1, "steps": 2})
    report = run(config)
    assert report.validations and Path(report.validations[0]).is_file()
    final = Path(report.export)
    assert json.loads((final / "unet" / "config.json").read_text())["in_channels"] == 4 + 4 * 3
    frames = tmp_path / "clip"
    frames.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 56, 3), 60 * i, np.uint8)).save(frames / f"{i:02d}.png")
    result = canvaslab.edit(frames=str(frames), instruction="make it red", model=str(final), steps=2, seed=0)
    assert result.image.shape == (40, 56, 3)


def test_sdxl_inpainting_with_v_prediction_min_snr_and_noise_offset(bases, mini, tmp_path):
    config = base_config(bases["sdxl-txt2img"], mini["inpaint-parquet"], tmp_path / "run", export="diffusers",
                         model={"prediction_type": "v_prediction"},
                         train={"mode": "lora", "max_steps": 3, "snr_gamma": 5.0, "noise_offset": 0.1},
                         validation={"count": 1, "steps": 2})
    report = run(config)
    assert all(np.isfinite(report.losses)) and report.validations
    from canvaslab.engines.diffusion.models import resolve_and_detect

    _, info = resolve_and_detect(report.export)
    assert (info.family, info.kind, info.prediction_type) == ("sdxl", "inpaint", "v_prediction")


def test_latent_and_text_caches_give_the_same_losses(bases, mini, tmp_path):
    sections = dict(objective="edit", train={"max_steps": 4})
    plain = run(base_config(bases["sd-pix2pix"], mini["edit-parquet"], tmp_path / "plain", **sections))
    cached_config = base_config(bases["sd-pix2pix"], mini["edit-parquet"], tmp_path / "cached",
                                cache={"latents": True, "text": True}, **sections)
    messages: list[str] = []
    cached = run(cached_config, report=messages.append)
    np.testing.assert_allclose(cached.losses, plain.losses, rtol=1e-4)
    files = sorted((tmp_path / "cached" / "cache" / "latents").glob("*.safetensors"))
    assert len(files) == 8 and any("caching latents of 8" in m for m in messages)
    stamps = [f.stat().st_mtime_ns for f in files]
    messages.clear()
    run(cached_config | {"output": str(tmp_path / "cached")}, report=messages.append)
    assert not any("caching" in m for m in messages)
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_validation_grid_and_tensorboard_log(bases, mini, tmp_path):
    config = base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "run",
                         validation={"every": 2, "count": 2, "steps": 2}, log={"trackers": ["tensorboard"]},
                         train={"max_steps": 2})
    report = run(config)
    assert [Path(p).name for p in report.validations] == ["step_000002.png"]
    from PIL import Image

    grid = Image.open(report.validations[0])
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # 2 rows x (input, output)
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.slow
def test_two_processes_see_each_sample_once_per_epoch(bases, mini, tmp_path):
    out = tmp_path / "run"
    shipped = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "2cpu-gloo.yaml"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(shipped), "-m", "canvaslab"]
    args = ["train", "inpaint", f"model.base={bases['sd-inpaint']}", f"data.path={mini['inpaint-folder']}",
            "data.resolution=64", "data.buckets=false", "train.batch_size=2", "train.max_steps=2",
            "log.samples=true", "log.trackers=[]", "validation.count=0", "checkpoints.every=1", f"output={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(launcher + args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [(out / "logs" / f"samples_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4  # 8 samples, 2 per batch, 2 processes: one epoch
    assert not set(seen[0]) & set(seen[1])
    from canvaslab.data.datasets import open_dataset

    assert sorted(seen[0] + seen[1]) == sorted(open_dataset(mini["inpaint-folder"], "inpaint").keys())
    assert (out / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_sdxl_edit_from_cached_latents_decodes_no_images(bases, mini, tmp_path):
    """With cached latents an editing run needs no pixels; SDXL's size conditioning comes from headers."""
    config = base_config(bases["sdxl-txt2img"], mini["edit-jsonl"], tmp_path / "run", objective="edit",
                         cache={"latents": True}, train={"max_steps": 2, "batch_size": 2})
    plain = run(base_config(bases["sdxl-txt2img"], mini["edit-jsonl"], tmp_path / "plain", objective="edit",
                            train={"max_steps": 2, "batch_size": 2}))
    cached = run(config)
    np.testing.assert_allclose(cached.losses, plain.losses, rtol=1e-4)


def test_dreambooth_prior_preservation_generates_missing_class_images_once(bases, mini, tmp_path):
    classes = tmp_path / "classes"
    classes.mkdir()
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(classes / "mine.png")  # the user's own: kept
    sections = dict(prior={"enabled": True, "class_prompt": "a photo of a square", "class_dir": str(classes),
                           "count": 3, "steps": 2, "weight": 1.0}, train={"max_steps": 2})
    messages: list[str] = []
    with_prior = run(base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "a", **sections),
                     report=messages.append)
    assert sorted(p.name for p in classes.glob("*.png")) == ["class_00000.png", "class_00001.png", "mine.png"]
    assert (classes / "class_00000.txt").read_text() == "a photo of a square"
    assert any("generating 2 class images" in m for m in messages)
    without = run(base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "b", train={"max_steps": 2}))
    assert with_prior.losses != without.losses  # the class batch adds its own loss
    stamps = {p.name: p.stat().st_mtime_ns for p in classes.iterdir()}
    messages.clear()
    run(base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "c", **sections), report=messages.append)
    assert {p.name: p.stat().st_mtime_ns for p in classes.iterdir()} == stamps
    assert not any("generating" in m for m in messages)


def test_bf16_gradient_checkpointing_and_text_encoder_training_run_on_the_cpu(bases, mini, tmp_path):
    config = base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "run", export="diffusers",
                         train={"mode": "full", "mixed_precision": "bf16", "gradient_checkpointing": True,
                                "text_encoder": True, "max_steps": 2})
    report = run(config)
    assert report.steps == 2 and all(np.isfinite(report.losses))
    before = load_unet(bases["sd-inpaint"]).state_dict()
    after = load_unet(tmp_path / "run" / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_fp16_on_cpu_and_missing_bitsandbytes_are_clear_errors(bases, mini, tmp_path):
    import importlib.util

    from canvaslab.errors import InputError

    with pytest.raises(InputError, match="fp16 needs a CUDA GPU"):
        run(base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "a", train={"mixed_precision": "fp16"}))
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(InputError, match="adamw8bit needs bitsandbytes"):
            run(base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "b", train={"optimizer": "adamw8bit"}))


def test_validation_images_are_cropped_with_their_masks(bases, mini, tmp_path):
    """A given validation image and its mask get the same crop as training samples, so they stay aligned."""
    from PIL import Image

    from canvaslab.train.batches import Layout
    from canvaslab.train.config import validate_config
    from canvaslab.train.validation import validation_cases

    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 48:80] = (255, 0, 0)  # a red stripe, masked
    mask = np.zeros((64, 128), np.uint8)
    mask[:, 48:80] = 255
    Image.fromarray(image).save(tmp_path / "v.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    config = validate_config(base_config(bases["sd-inpaint"], mini["inpaint-folder"], tmp_path / "run",
                                         validation={"images": [str(tmp_path / "v.png")], "masks": [str(tmp_path / "m.png")],
                                                     "prompts": ["red"]}))
    (case,) = validation_cases(config, data=None, layout=Layout([(64, 64)], []))
    assert case.images[0].shape == (64, 64, 3) and case.prompt == "red"
    # the centre crop (x 32..96 of the original) puts the stripe at x 16..48; a squashed mask would sit at 24..40
    assert case.mask[:, 17:47].all() and not case.mask[:, :15].any() and not case.mask[:, 49:].any()
    assert (case.images[0][case.mask][:, 0] > 200).all() and (case.images[0][~case.mask][:, 0] < 50).all()


@pytest.mark.slow
def test_lora_training_with_an_incompatible_transformers_peft_pair_is_one_line(bases, mini, tmp_path):
    """transformers 5.24 refuses peft 0.21 deep inside peft's integration; training says which pair and the fix."""
    fake = tmp_path / "site"
    (fake / "transformers-5.24.0.dist-info").mkdir(parents=True)
    (fake / "transformers-5.24.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 5.24.0\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    args = ["train", "inpaint", f"model.base={bases['sd-inpaint']}", f"data.path={mini['inpaint-folder']}",
            "data.resolution=64", "train.mode=lora", "train.max_steps=1", "log.trackers=[]", "validation.count=0",
            "export=none", f"output={tmp_path / 'run'}"]
    done = subprocess.run(_cli(*args), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: transformers 5.24.0 does not work with peft") and "pip install 'transformers<5.24'" in last
    assert not (tmp_path / "run" / "checkpoints").exists()
