"""From a dataset to training batches: bucket sizes, per-sample randomness, masks, collation.

Every random choice for a sample (crop, flip, mask, caption dropout) comes from a generator seeded
by (seed, epoch, index), never from global state, so the same sample gets the same augmentation
whatever the worker count, the process count or whether the run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from canvaslab.data.masks import MaskMixture
from canvaslab.data.transforms import centre_crop_origin, fit_example, sample_rng
from canvaslab.train.config import TrainConfig


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [-1, 1], as the VAE expects."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0)


@dataclass
class Layout:
    """Where each sample trains: its bucket's (width, height)."""

    buckets: list[tuple[int, int]]
    bucket_ids: list[int]

    def size(self, index: int) -> tuple[int, int]:
        return self.buckets[self.bucket_ids[index]]


def plan_layout(data: Any, config: TrainConfig) -> Layout:
    from canvaslab.data.buckets import assign_buckets, make_buckets

    resolution = config.data.resolution
    if not config.data.buckets:
        side = resolution - resolution % config.data.bucket_step
        return Layout([(side, side)], [0] * len(data))
    buckets = make_buckets(resolution, step=config.data.bucket_step, max_ratio=config.data.max_ratio)
    return Layout(list(buckets), list(assign_buckets(data.sizes(), buckets)))


class EpochBatches:
    """A batch sampler that yields lists of (epoch, index) so the dataset knows the epoch too."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def set_start(self, batch: int) -> None:
        self.sampler.set_start(batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.sampler:
            yield [(self.epoch, int(i)) for i in batch]


class TrainingSamples(torch.utils.data.Dataset):
    """dataset[(epoch, index)] -> one fitted, masked, captioned sample as tensors."""

    def __init__(self, data: Any, layout: Layout, config: TrainConfig, *, pixels: bool = True) -> None:
        self.data, self.layout, self.config = data, layout, config
        self.mixture = MaskMixture.from_config({**config.masks.mixture, "p_everything": config.masks.p_everything})
        self.pixels = pixels  # False: only the metadata (cached latents stand in for the images)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        epoch, index = item
        rng = sample_rng(self.config.train.seed, epoch, index)
        # Fixed draw order, whatever the branches below use: the stream must not depend on the data.
        keep_caption = rng.random() >= self.config.data.caption_dropout
        use_user_mask = rng.random() < self.config.masks.user_masks
        mask_rng = np.random.default_rng(rng.integers(2**63))
        fit_rng = np.random.default_rng(rng.integers(2**63))

        width, height = self.layout.size(index)
        if not self.pixels and self.config.objective != "inpaint":
            return self._metadata_only(index, (width, height))
        example = self.data[index]
        caption = example.caption
        if self.config.objective == "inpaint" and not keep_caption:
            caption = ""
        sample: dict[str, Any] = {"index": index, "key": example.key, "caption": caption}
        example = fit_example(example, (width, height), fit_rng, random_crop=self.config.data.random_crop,
                              random_flip=self.config.data.random_flip)
        sample["pixels"] = to_tensor(example.image)
        original = example.original_size or (example.image.shape[1], example.image.shape[0])
        sample["original_size"] = torch.tensor([original[1], original[0]])  # (h, w) as SDXL expects
        top_left = getattr(example, "crop_top_left", (0, 0)) or (0, 0)
        sample["crop_top_left"] = torch.tensor(list(top_left))
        if self.config.objective == "inpaint":
            if example.mask is not None and use_user_mask:
                mask = example.mask
            else:
                mask = self.mixture.sample(mask_rng, height, width)
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).float()[None]
        else:
            sample["inputs"] = torch.stack([to_tensor(frame) for frame in example.inputs])
        return sample


    def _metadata_only(self, index: int, size: tuple[int, int]) -> dict[str, Any]:
        """Caption, key and SDXL size conditioning, without decoding the images (their latents are cached).
        Caching requires centre crops and no flips, so the crop is known from the header alone."""
        record = self.data.record(index)
        original = self.data.sizes()[index]
        return {
            "index": index, "key": record.key, "caption": record.caption,
            "original_size": torch.tensor([original[1], original[0]]),
            "crop_top_left": torch.tensor(list(centre_crop_origin(original, size))),
        }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (one bucket per batch, so sizes agree) and list everything else."""
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        batch[name] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
