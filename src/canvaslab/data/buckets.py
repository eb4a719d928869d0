"""Aspect-ratio buckets and a deterministic, rank-aware batch sampler (pure Python + numpy, no torch).

Training at one square size crops away the sides of wide images and the top of tall ones. Buckets
(as in kohya's scripts and SDXL) are a set of (width, height) sizes of about the same area; each
image goes to the bucket nearest its aspect ratio and every batch is drawn from one bucket, so the
tensors of a batch share a shape.

`BucketBatchSampler` is an iterable of index lists, usable as ``DataLoader(batch_sampler=...)``.
Its order depends only on (seed, epoch). It deals batches to ranks itself (rank r gets batches r,
r + world_size, ...), so give it the real rank and world size and do not let another layer (e.g.
accelerate's `prepare` on the DataLoader) shard it a second time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from canvaslab.errors import InputError

Bucket = tuple[int, int]  # (width, height)


def make_buckets(resolution: int, *, step: int = 64, max_ratio: float = 2.0) -> list[Bucket]:
    """(width, height) sizes, multiples of `step`, area at most resolution², aspect in [1/max_ratio, max_ratio].

    For each width the tallest height that fits the area is taken, so every bucket uses about the
    full pixel budget, and its transpose is added too (tall and wide images get mirrored choices);
    (resolution, resolution) is always included, even off the step grid. Sorted from tallest to widest.
    """
    _check_bucket_options(resolution, step, max_ratio)
    area = resolution * resolution
    found = {(resolution, resolution)}
    for width in range(step, area // step + 1, step):
        height = (area // width) // step * step
        if height >= step and 1 / max_ratio <= width / height <= max_ratio:
            found |= {(width, height), (height, width)}  # both orientations, as the tall side may round worse
    return sorted(found, key=lambda bucket: (bucket[0] / bucket[1], bucket[0]))


def _check_bucket_options(resolution: int, step: int, max_ratio: float) -> None:
    if not _positive_int(step):
        raise InputError(f"the bucket step must be a positive whole number of pixels, not {step!r}")
    if not _positive_int(resolution) or resolution < step:
        raise InputError(
            f"the resolution must be a whole number of pixels of at least the step ({step}), not {resolution!r}"
        )
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not max_ratio >= 1:
        raise InputError(f"the largest aspect ratio must be a number of at least 1, not {max_ratio!r}")


def _positive_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def assign_buckets(sizes: Sequence[tuple[int, int]], buckets: Sequence[Bucket]) -> list[int]:
    """For each (width, height), the index of the bucket with the nearest aspect ratio (in log space).

    Log space makes 2:1 and 1:2 equally far from 1:1. Ties go to the earlier bucket.
    """
    if not buckets:
        raise InputError("there are no buckets to assign images to")
    bucket_logs = np.array([math.log(w / h) for w, h in buckets])
    assigned = []
    for width, height in sizes:
        if width < 1 or height < 1:
            raise InputError(f"an image size must be positive, not {width}x{height}")
        assigned.append(int(np.argmin(np.abs(bucket_logs - math.log(width / height)))))
    return assigned


class BucketBatchSampler:
    """Batches of dataset indices, each from one bucket, in an order fixed by (seed, epoch).

    Per epoch: the indices of each bucket are shuffled and cut into batches (the last one of a
    bucket may be short unless `drop_last`), all batches are shuffled together, and rank r takes
    batches r, r + world_size, ... When the batch count does not divide by `world_size`, ranks
    must still get the same number of batches (DDP would wait forever for the missing one): the
    list is padded by repeating batches from the start of the epoch, so a few samples are seen twice;
    with `drop_last`, the extra batches are dropped instead.
    """

    def __init__(
        self,
        bucket_ids: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        self._check(batch_size, rank, world_size)
        self.bucket_ids = [int(b) for b in bucket_ids]
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, int(seed), rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self._start = 0, 0

    @staticmethod
    def _check(batch_size: int, rank: int, world_size: int) -> None:
        if not _positive_int(batch_size):
            raise InputError(f"the batch size must be a positive whole number, not {batch_size!r}")
        if not _positive_int(world_size):
            raise InputError(f"the world size must be a positive whole number, not {world_size!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise InputError(f"the rank must be from 0 to {world_size - 1}, not {rank!r}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, batch: int) -> None:
        """Resume: the next iteration skips this rank's first `batch` batches of the current epoch."""
        if not isinstance(batch, (int, np.integer)) or batch < 0:
            raise InputError(f"the batch to resume from must be a whole number of at least 0, not {batch!r}")
        self._start = int(batch)

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0  # a resume applies to one pass only
        yield from self.batches(self.epoch)[start:]

    def __len__(self) -> int:
        count = self._global_batch_count()
        return count // self.world_size if self.drop_last else -(-count // self.world_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for `epoch`, the same on every call and every machine."""
        everything = self._epoch_batches(epoch)
        if self.drop_last:
            everything = everything[: len(everything) - len(everything) % self.world_size]
        elif everything and len(everything) % self.world_size:
            padded = -(-len(everything) // self.world_size) * self.world_size
            everything = [everything[i % len(everything)] for i in range(padded)]
        return everything[self.rank :: self.world_size]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        # A generator seeded from (seed, epoch) only: global random state never leaks in.
        rng = np.random.default_rng([self.seed, int(epoch)])
        batches = []
        for members in self._members().values():
            order = rng.permutation(members).tolist() if self.shuffle else list(members)
            for first in range(0, len(order), self.batch_size):
                batch = order[first : first + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _members(self) -> dict[int, list[int]]:
        members: dict[int, list[int]] = {}
        for index, bucket in enumerate(self.bucket_ids):
            members.setdefault(bucket, []).append(index)
        return dict(sorted(members.items()))

    def _global_batch_count(self) -> int:
        per_bucket = (len(m) // self.batch_size if self.drop_last else -(-len(m) // self.batch_size)
                      for m in self._members().values())
        return sum(per_bucket)
