"""The unified model's training losses: masking schedule, label placement, and that each loss trains."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from canvaslab.train.unified_losses import IGNORE, lm_loss, mask_tokens, mmu_loss, t2i_loss  # noqa: E402

from . import tiny  # noqa: E402


def test_masking_follows_the_cosine_schedule_and_labels_only_masked_tokens():
    ids = torch.arange(64).repeat(512, 1) + 1000
    inputs, labels, ratio = mask_tokens(ids, mask_id=7, generator=torch.Generator().manual_seed(0))
    masked = inputs == 7
    assert torch.equal(masked, labels != IGNORE)
    assert torch.equal(labels[masked], ids[masked]) and torch.equal(inputs[~masked], ids[~masked])
    assert torch.equal(masked.sum(1), (64 * ratio).round().clamp(min=1).long())
    # E[cos(pi t / 2)] for t ~ U(0, 1) is 2 / pi
    assert abs(ratio.mean().item() - 2 / math.pi) < 0.03
    floor = mask_tokens(ids, 7, torch.Generator().manual_seed(0), min_masking_rate=0.5)[2]
    assert floor.min() >= 0.5
    again = mask_tokens(ids, 7, torch.Generator().manual_seed(0))[0]
    assert torch.equal(again, inputs)


def _fit(loss_fn, steps: int = 25) -> tuple[float, float]:
    model = tiny.tiny_model(seed=3).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for step in range(steps):
        loss = loss_fn(model, torch.Generator().manual_seed(0))  # the same batch and masks each time
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return first, loss_fn(model, torch.Generator().manual_seed(0)).item()


def test_each_loss_falls_when_overfitting_a_fixed_batch():
    model = tiny.tiny_model()
    layout = model.layout
    images = layout.codes_to_ids(torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(1)))
    texts = [[5, 6, 7], [8, 9]]

    def t2i(m, g):
        return t2i_loss(m, layout, texts, images, g, max_text_len=8, caption_dropout=0.0, min_masking_rate=0.0)[0]

    def lm(m, g):
        return lm_loss(m, layout, [[5, 6, 7, 8, 9, 10], [11, 12]], max_seq_len=16)

    def mmu(m, g):
        return mmu_loss(m, layout, images, [[5, 6], []], [[20, 21, 22], [30]], max_seq_len=16)

    for name, fn in (("t2i", t2i), ("lm", lm), ("mmu", mmu)):
        before, after = _fit(fn)
        assert after < 0.5 * before, (name, before, after)


def test_caption_dropout_empties_the_text_part():
    model = tiny.tiny_model()
    layout = model.layout
    images = layout.codes_to_ids(torch.zeros(4, 16, dtype=torch.long))
    texts = [[5, 6, 7]] * 4
    kept = t2i_loss(model, layout, texts, images, torch.Generator().manual_seed(0), max_text_len=8,
                    caption_dropout=0.0, min_masking_rate=1.0)[0]
    dropped = t2i_loss(model, layout, texts, images, torch.Generator().manual_seed(0), max_text_len=8,
                       caption_dropout=1.0, min_masking_rate=1.0)[0]
    unconditional = t2i_loss(model, layout, [[]] * 4, images, torch.Generator().manual_seed(0), max_text_len=8,
                             caption_dropout=0.0, min_masking_rate=1.0)[0]
    assert dropped.item() != kept.item()
    assert abs(dropped.item() - unconditional.item()) < 1e-6
