"""Validation during training: fixed inputs rendered by the model being trained, as a grid.

The same prompts, images, masks and seeds every time, so grids from different steps compare. Inputs
come from `validation.images/masks/prompts` or, when none are given, from the first samples of the
dataset (centre-cropped to their bucket; masks: the sample's own, else a fixed random one). Each row:
input (mask shown in white for inpainting), output. Saved as `OUTPUT/validation/step_N.png` and sent
to every tracker (TensorBoard, Weights & Biases).

Cases with a ground truth are also scored with `canvaslab eval`'s weight-free metrics: inpainting
against the sample itself (the output composited over it outside the mask, as inference does: hole
PSNR/SSIM/L1, detail, seam), editing from the dataset against its target (PSNR/SSIM/L1). Per case and
means in `OUTPUT/validation/step_N.json`, the means to every tracker as `validation/<metric>`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from canvaslab.core.image import atomic_write_bytes
from canvaslab.data.masks import MaskMixture
from canvaslab.train.components import Components
from canvaslab.train.config import TrainConfig


@dataclass
class Case:
    prompt: str
    images: list[np.ndarray]  # inpaint: [image]; edit: the N conditioning images
    mask: np.ndarray | None = None
    target: np.ndarray | None = None  # what a perfect output would be (scored when given)


def validation_cases(config: TrainConfig, data: Any, layout: Any) -> list[Case]:
    from canvaslab.data.buckets import assign_buckets
    from canvaslab.data.records import Example
    from canvaslab.data.transforms import fit_example

    section = config.validation
    cases: list[Case] = []
    if section.images:
        from canvaslab.core.image import load_image, load_mask

        for i, path in enumerate(section.images):
            image = load_image(path).rgb
            size = layout.buckets[assign_buckets([(image.shape[1], image.shape[0])], layout.buckets)[0]]
            # the user's mask is cropped together with its image, exactly as training samples are
            own_mask = load_mask(section.masks[i], size=(image.shape[1], image.shape[0])) if section.masks else None
            example = fit_example(Example(key=str(path), image=image, caption="", mask=own_mask), size,
                                  np.random.default_rng(0))
            mask = None
            if config.objective == "inpaint":
                mask = example.mask if example.mask is not None else _fixed_mask(config, i, size)
            prompt = section.prompts[i % len(section.prompts)] if section.prompts else ""
            cases.append(Case(prompt, [example.image], mask, example.image if mask is not None else None))
        return cases
    for i in range(min(section.count, len(data))):
        example = fit_example(data[i], layout.size(i), np.random.default_rng(0))
        prompt = section.prompts[i % len(section.prompts)] if section.prompts else example.caption
        if config.objective == "inpaint":
            mask = example.mask if example.mask is not None else _fixed_mask(config, i, layout.size(i))
            cases.append(Case(prompt, [example.image], mask, example.image))
        else:
            cases.append(Case(prompt, list(example.inputs), target=example.image))
    return cases


def _fixed_mask(config: TrainConfig, i: int, size: tuple[int, int]) -> np.ndarray:
    mixture = MaskMixture.from_config({**config.masks.mixture, "p_everything": 0.0})
    return mixture.sample(np.random.default_rng([config.validation.seed, i]), size[1], size[0])


def build_pipeline(components: Components, *, unet: Any | None = None, text_encoders: list[Any] | None = None) -> Any:
    """An inference pipeline over the training modules (the class inference would pick)."""
    from canvaslab.engines.diffusion.models import ModelInfo, pipeline_class, pipeline_class_name

    unet = unet or components.unet
    encoders = text_encoders or components.text_encoders
    kind = "inpaint" if components.frames == 0 else "edit"
    info = ModelInfo(components.family, kind, unet.config.in_channels, components.prediction_type,  # type: ignore[arg-type]
                     unet.config.sample_size * 8, condition_frames=components.frames)
    cls = pipeline_class(pipeline_class_name(info, "inpaint" if kind == "inpaint" else "edit"))
    parts: dict[str, Any] = dict(vae=components.vae, unet=unet, scheduler=components.sample_scheduler,
                                 text_encoder=encoders[0], tokenizer=components.tokenizers[0])
    if components.family == "sdxl":
        parts.update(text_encoder_2=encoders[1], tokenizer_2=components.tokenizers[-1])
    accepted = set(inspect.signature(cls.__init__).parameters)
    if "safety_checker" in accepted:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for optional in ("image_encoder", "feature_extractor"):
        if optional in accepted and optional not in parts:
            parts[optional] = None
    pipe = cls(**{k: v for k, v in parts.items() if k in accepted})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_case(pipe: Any, case: Case, config: TrainConfig, seed: int) -> np.ndarray:
    import torch
    from PIL import Image

    height, width = case.images[0].shape[:2]
    generator = torch.Generator().manual_seed(seed)
    common = dict(prompt=case.prompt, num_inference_steps=config.validation.steps,
                  guidance_scale=config.validation.guidance_scale, generator=generator, output_type="np")
    if case.mask is not None:
        out = pipe(image=Image.fromarray(case.images[0]), mask_image=Image.fromarray(case.mask.astype(np.uint8) * 255),
                   height=height, width=width, **common)
    else:
        images = [Image.fromarray(im) for im in case.images]
        size = {"height": height, "width": width} if "height" in inspect.signature(pipe.__call__).parameters else {}
        out = pipe(image=images if len(images) > 1 else images[0], image_guidance_scale=config.validation.image_guidance_scale,
                   **size, **common)
    return (np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8)


def render_validation(config: TrainConfig, components: Components, accelerator: Any, data: Any, layout: Any, step: int) -> Path | None:
    import torch

    from canvaslab.core.grid import make_grid, mask_overlay
    from canvaslab.core.image import save_image

    cases = validation_cases(config, data, layout)
    if not cases:
        return None
    unet = accelerator.unwrap_model(components.unet)
    was_training = unet.training
    unet.eval()
    pipe = build_pipeline(components, unet=unet)
    rows, scores = [], []
    try:
        with torch.no_grad():
            for i, case in enumerate(cases):
                output = run_case(pipe, case, config, config.validation.seed + i)
                shown = case.images[0] if case.mask is None else mask_overlay(case.images[0], case.mask)
                rows.append([*([shown] if case.mask is not None else case.images), output])
                scores.append(score_case(case, output))
    finally:
        unet.train(was_training)
    columns = len(rows[0])
    labels = (["input (mask white)", "output"] if cases[0].mask is not None
              else [f"input {i + 1}" for i in range(columns - 1)] + ["output"])
    grid = make_grid(rows, col_labels=labels, row_labels=[_short(c.prompt) for c in cases])
    path = config.output_dir / "validation" / f"step_{step:06d}.png"
    save_image(path, grid)
    _log_image(accelerator, grid, step)
    means = write_scores(path.with_suffix(".json"), step, [c.prompt for c in cases], scores)
    if means and accelerator.trackers:
        accelerator.log({f"validation/{name}": value for name, value in means.items()}, step=step)
    return path


def score_case(case: Case, output: np.ndarray) -> dict[str, float]:
    """The weight-free eval metrics of one validation output against its ground truth ({} without one)."""
    from canvaslab.eval.metrics.pixels import full_metrics, hole_metrics

    if case.target is None or output.shape != case.target.shape:
        return {}
    if case.mask is None:
        return full_metrics(output, case.target)
    if not case.mask.any():
        return {}
    composited = np.where(case.mask[..., None], output, case.target)  # outside the mask: the input, as inference
    values = hole_metrics(composited, case.target, case.mask)
    return {k: values[k] for k in ("psnr_hole", "ssim_hole", "l1_hole", "detail", "seam")}


def write_scores(path: Path, step: int, prompts: list[str], scores: list[dict[str, float]]) -> dict[str, float]:
    """step_N.json: each case's numbers and their means; returns the means."""
    import json

    names = dict.fromkeys(name for score in scores for name in score)  # cases without a ground truth have none
    means = {name: float(np.mean([score[name] for score in scores if name in score])) for name in names}
    if not means:
        return {}
    record = {"step": step, "mean": means, "cases": [{"prompt": p, **s} for p, s in zip(prompts, scores)]}
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return means


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _log_image(accelerator: Any, grid: np.ndarray, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", grid, step, dataformats="HWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": wandb.Image(grid)}, step=step)
