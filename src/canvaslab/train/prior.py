"""DreamBooth prior preservation for inpainting: class images from the base model, trained alongside.

Fine-tuning on a handful of images of one subject makes a model forget what the rest of the class looks
like. DreamBooth's remedy: generate images of the class (``prior.class_prompt``) with the base model
before training, and add a batch of them, with random masks, to every step, weighting their loss by
``prior.weight``. Class images already in ``prior.class_dir`` are kept; only the missing ones are
generated (each process paints its share), so a resumed or repeated run reuses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from canvaslab.core.image import atomic_write_bytes, save_image
from canvaslab.data.records import is_image_file
from canvaslab.train.batches import Layout, TrainingSamples, collate
from canvaslab.train.components import Components
from canvaslab.train.config import TrainConfig


def class_dir(config: TrainConfig) -> Path:
    return Path(config.prior.class_dir) if config.prior.class_dir else config.output_dir / "class_images"


def class_side(config: TrainConfig) -> int:
    return config.data.resolution - config.data.resolution % config.data.bucket_step


def ensure_class_images(config: TrainConfig, components: Components, accelerator: Any, say: Any) -> Path:
    """Fill the class folder up to `prior.count` images (with `.txt` captions); returns the folder."""
    from canvaslab.train.validation import build_pipeline

    folder = class_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(p for p in folder.iterdir() if is_image_file(p))
    missing = [i for i in range(config.prior.count) if not (folder / f"class_{i:05d}.png").exists()][
        : max(0, config.prior.count - len(have))
    ]
    mine = missing[accelerator.process_index::accelerator.num_processes]
    if missing and accelerator.is_main_process:
        say(f"generating {len(missing)} class images for '{config.prior.class_prompt}' in {folder}")
    if mine:
        side = class_side(config)
        pipe = build_pipeline(components)
        pipe.to(accelerator.device)
        grey = np.full((side, side, 3), 127, np.uint8)
        everything = np.full((side, side), 255, np.uint8)
        from PIL import Image

        for i in mine:
            generator = torch.Generator().manual_seed(config.train.seed + i)
            with torch.no_grad():
                out = pipe(prompt=config.prior.class_prompt, image=Image.fromarray(grey),
                           mask_image=Image.fromarray(everything), height=side, width=side,
                           num_inference_steps=config.prior.steps, guidance_scale=config.prior.guidance_scale,
                           generator=generator, output_type="np").images[0]
            image = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
            atomic_write_bytes(folder / f"class_{i:05d}.txt", config.prior.class_prompt.encode())
            save_image(folder / f"class_{i:05d}.png", image)  # last: its existence marks the item done
    accelerator.wait_for_everyone()
    return folder


class PriorBatches:
    """A batch of class samples for each micro-batch, chosen by (seed, epoch, process, batch)."""

    def __init__(self, config: TrainConfig, folder: Path) -> None:
        from canvaslab.data.datasets import open_dataset

        self.config = config
        self.data = open_dataset(folder, "inpaint")
        side = class_side(config)
        self.samples = TrainingSamples(self.data, Layout([(side, side)], [0] * len(self.data)), config)

    def batch(self, epoch: int, process: int, batch: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.config.train.seed, epoch, process, batch, 1])
        size = self.config.train.batch_size
        picks = rng.choice(len(self.data), size=size, replace=len(self.data) < size)
        return collate([self.samples[(epoch, int(i))] for i in picks])
