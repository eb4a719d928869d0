"""Aspect buckets and the bucket batch sampler: limits, coverage over ranks, determinism, resume."""

import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvaslab.data.buckets import BucketBatchSampler, assign_buckets, make_buckets
from canvaslab.errors import InputError


@settings(max_examples=60, deadline=None)
@given(
    step=st.sampled_from([8, 16, 32, 64]),
    multiple=st.integers(2, 24),
    max_ratio=st.floats(1.0, 4.0),
)
def test_buckets_respect_area_ratio_and_step(step, multiple, max_ratio):
    resolution = step * multiple
    buckets = make_buckets(resolution, step=step, max_ratio=max_ratio)
    assert (resolution, resolution) in buckets
    assert len(set(buckets)) == len(buckets)
    for width, height in buckets:
        assert width % step == 0 and height % step == 0
        assert width * height <= resolution * resolution
        assert 1 / max_ratio - 1e-9 <= width / height <= max_ratio + 1e-9
    ratios = [w / h for w, h in buckets]
    assert ratios == sorted(ratios)
    assert {(h, w) for w, h in buckets} == set(buckets), "tall and wide images get mirrored choices"


def test_default_buckets_use_the_pixel_budget_and_reach_the_ratio_limit():
    buckets = make_buckets(512)
    assert all(w * h >= 0.75 * 512 * 512 for w, h in buckets)
    widest = max(w / h for w, h in buckets)
    assert 1.5 < widest <= 2.0 and (512, 512) in buckets and len(buckets) >= 5


def test_square_resolution_off_the_step_grid_is_still_a_bucket():
    assert (500, 500) in make_buckets(500, step=64)


@pytest.mark.parametrize("kwargs", [{"resolution": 0}, {"resolution": 32, "step": 64}, {"resolution": 512, "max_ratio": 0.5}])
def test_bad_bucket_options_are_refused(kwargs):
    with pytest.raises(InputError):
        make_buckets(**kwargs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4000), st.integers(1, 4000)), min_size=1, max_size=30))
def test_assignment_picks_the_nearest_aspect_in_log_space(sizes):
    buckets = make_buckets(512)
    for (width, height), index in zip(sizes, assign_buckets(sizes, buckets)):
        best = min(abs(math.log(width / height) - math.log(w / h)) for w, h in buckets)
        chosen = buckets[index]
        assert abs(math.log(width / height) - math.log(chosen[0] / chosen[1])) == pytest.approx(best)


def test_assignment_of_typical_sizes():
    buckets = make_buckets(512)
    square, wide, tall = assign_buckets([(1000, 1000), (1920, 1080), (1080, 1920)], buckets)
    assert buckets[square] == (512, 512)
    assert buckets[wide][0] > buckets[wide][1] and buckets[tall][0] < buckets[tall][1]


# --- the sampler ------------------------------------------------------------------------------


def all_ranks(bucket_ids, batch_size, world_size, epoch=0, **kwargs):
    return [
        BucketBatchSampler(bucket_ids, batch_size, seed=5, rank=r, world_size=world_size, **kwargs).batches(epoch)
        for r in range(world_size)
    ]


@settings(max_examples=80, deadline=None)
@given(
    bucket_ids=st.lists(st.integers(0, 4), min_size=1, max_size=60),
    batch_size=st.integers(1, 5),
    world_size=st.integers(1, 4),
    drop_last=st.booleans(),
)
def test_every_rank_gets_as_many_single_bucket_batches(bucket_ids, batch_size, world_size, drop_last):
    per_rank = all_ranks(bucket_ids, batch_size, world_size, drop_last=drop_last)
    lengths = {len(batches) for batches in per_rank}
    assert len(lengths) == 1, "DDP needs the same number of batches on every rank"
    assert lengths == {len(BucketBatchSampler(bucket_ids, batch_size, seed=5, world_size=world_size, drop_last=drop_last))}
    seen = Counter(i for batches in per_rank for batch in batches for i in batch)
    for batches in per_rank:
        for batch in batches:
            assert len({bucket_ids[i] for i in batch}) == 1 and 1 <= len(batch) <= batch_size
            assert not drop_last or len(batch) == batch_size
    if drop_last:
        assert max(seen.values(), default=1) == 1  # nothing repeated
    else:
        assert set(seen) == set(range(len(bucket_ids)))  # every sample, padding only repeats


def test_two_ranks_see_disjoint_samples_covering_the_dataset():
    bucket_ids = [0] * 8 + [1] * 8 + [2] * 8  # 6 batches of 4: divides over 2 ranks
    first, second = all_ranks(bucket_ids, 4, 2)
    seen_first = {i for batch in first for i in batch}
    seen_second = {i for batch in second for i in batch}
    assert not seen_first & seen_second
    assert seen_first | seen_second == set(range(len(bucket_ids)))


def test_uneven_batch_counts_are_padded_from_the_start_of_the_epoch():
    everything = BucketBatchSampler([0] * 12, 4, seed=5).batches(0)  # one rank: the epoch's whole order
    assert len(everything) == 3  # 3 batches for 2 ranks
    first, second = all_ranks([0] * 12, 4, 2)
    assert first == [everything[0], everything[2]]
    assert second == [everything[1], everything[0]]  # the padding repeats the epoch's first batch


def test_order_depends_only_on_seed_and_epoch():
    bucket_ids = [i % 3 for i in range(40)]
    sampler = BucketBatchSampler(bucket_ids, 3, seed=11)
    random.seed(1)
    np.random.seed(1)
    first = sampler.batches(2)
    random.seed(2)
    np.random.seed(2)
    np.random.random(100)
    assert BucketBatchSampler(bucket_ids, 3, seed=11).batches(2) == first
    assert sampler.batches(3) != first
    assert BucketBatchSampler(bucket_ids, 3, seed=12).batches(2) != first
    assert sampler.batches(2) == first


def test_without_shuffle_batches_follow_dataset_order_per_bucket():
    batches = BucketBatchSampler([0, 1, 0, 1, 0], 2, seed=0, shuffle=False).batches(0)
    assert batches == [[0, 2], [4], [1, 3]]


def test_iteration_follows_set_epoch_and_resume_gives_the_exact_tail():
    bucket_ids = [i % 4 for i in range(50)]
    sampler = BucketBatchSampler(bucket_ids, 3, seed=7, rank=1, world_size=2)
    sampler.set_epoch(4)
    uninterrupted = list(sampler)
    assert uninterrupted == sampler.batches(4) and len(uninterrupted) == len(sampler)
    resumed = BucketBatchSampler(bucket_ids, 3, seed=7, rank=1, world_size=2)
    resumed.set_epoch(4)
    resumed.set_start(5)
    assert list(resumed) == uninterrupted[5:]
    assert list(resumed) == uninterrupted, "a resume applies to one pass only"


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"world_size": 0}, {"rank": 2, "world_size": 2}, {"rank": -1}]
)
def test_bad_sampler_options_are_refused(kwargs):
    options = {"batch_size": 2, **kwargs}
    with pytest.raises(InputError):
        BucketBatchSampler([0, 1], options.pop("batch_size"), seed=0, **options)


def test_sampler_drives_a_torch_dataloader():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    sizes = [(64, 32)] * 5 + [(32, 64)] * 3
    buckets = [(64, 32), (32, 64)]
    sampler = BucketBatchSampler(assign_buckets(sizes, buckets), 2, seed=0)
    data = [torch.zeros(3, h, w) for w, h in sizes]
    shapes = [tuple(batch.shape) for batch in DataLoader(data, batch_sampler=sampler)]
    assert sorted(shapes) == sorted([(2, 3, 32, 64)] * 2 + [(1, 3, 32, 64)] + [(2, 3, 64, 32), (1, 3, 64, 32)])
