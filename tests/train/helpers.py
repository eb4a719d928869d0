"""Shared by the trainer tests: run a config, and measure a model's loss on fixed inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from canvaslab.train.batches import TrainingSamples, collate, plan_layout
from canvaslab.train.components import load_components
from canvaslab.train.config import validate_config
from canvaslab.train.objectives import StepInputs, diffusion_loss
from canvaslab.train.trainer import open_training_data, train


def run(config: dict, **kwargs: Any):
    return train(validate_config(config), **kwargs)


def fixed_loss(config: dict, unet: Any | None = None, *, draws: int = 6, samples: int = 4) -> float:
    """The loss of the base model (or `unet`) on the first samples, averaged over fixed noise draws."""
    cfg = validate_config(config)
    data = open_training_data(cfg)
    components = load_components(cfg, dataset_frames=data.frames if cfg.objective == "edit" else 0)
    model = unet if unet is not None else components.unet
    layout = plan_layout(data, cfg)
    samples_ = TrainingSamples(data, layout, cfg)
    batch = collate([samples_[(0, i)] for i in range(samples)])
    null = None
    if components.frames:
        from canvaslab.train.components import encode_text

        null = encode_text(components, [""], torch.device("cpu"))
    total = 0.0
    with torch.no_grad():
        for draw in range(draws):
            inputs = StepInputs(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(draw))
            total += diffusion_loss(components, model, batch, cfg, inputs, null_text=null).item()
    return total / draws


def load_unet(folder: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder / "unet")
