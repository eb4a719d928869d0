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


def test_each_loss_falls_when_overfitting_a_fixed_batch(model):
    layout = model.layout  # each loss trains a fresh model of its own (`_fit`)
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


def test_caption_dropout_empties_the_text_part(model):
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


# -- the reference's targets, position by position ------------------------------------------------
# Show-o's training (training/prompting_utils.py + models/modeling_showo.py) builds one label per
# position and slices: t2i from position max_text_len + 1 on (<|soi|>, the masked image tokens,
# <|eoi|>), predicted in place; lm and mmu shifted by one (next token). These tests write those labels
# out independently and compare the losses.


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


def test_t2i_loss_has_the_references_targets_soi_masked_image_tokens_and_eoi(model):
    from canvaslab.engines.unified.attention import t2i_attention_mask
    from canvaslab.engines.unified.prompts import t2i_sequences

    layout = model.layout
    images = layout.codes_to_ids(torch.randint(0, 8192, (3, 16), generator=torch.Generator().manual_seed(1)))
    texts = [[5, 6, 7], [8], [9, 10]]
    loss, _ = t2i_loss(model, layout, texts, images, torch.Generator().manual_seed(4), max_text_len=8,
                       caption_dropout=0.4, min_masking_rate=0.0)
    draws = torch.Generator().manual_seed(4)  # the same draws in the same order: caption dropout, then masks
    dropped = (torch.rand(3, generator=draws) < 0.4).tolist()
    inputs, labels, _ = mask_tokens(images, layout.mask_id, draws)
    sequence = t2i_sequences(layout, [[] if d else t for d, t in zip(dropped, texts)], inputs, max_text_len=8)
    text_part = 8 + 1
    targets = torch.cat([torch.full((3, text_part), IGNORE), torch.full((3, 1), layout.soi_id), labels,
                         torch.full((3, 1), layout.eoi_id)], dim=1)
    with torch.no_grad():
        logits = model(sequence, t2i_attention_mask(sequence, layout))
        expected = _cross_entropy(logits[:, text_part:], targets[:, text_part:])
        assert torch.allclose(loss, expected, rtol=1e-6, atol=0), (loss.item(), expected.item())


def test_mmu_loss_targets_sot_after_eoi_then_the_answer_and_eot(model):
    from canvaslab.engines.unified.attention import mmu_attention_mask

    layout = model.layout
    images = layout.codes_to_ids(torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(2)))
    questions, answers = [[5, 6], []], [[20, 21, 22], [30]]
    with torch.no_grad():
        loss = mmu_loss(model, layout, images, questions, answers, max_seq_len=16)
    rows, targets = [], []
    for image, question, answer in zip(images.tolist(), questions, answers):
        rows.append([layout.mmu_id, layout.soi_id, *image, layout.eoi_id, layout.sot_id, *question, *answer, layout.eot_id])
        targets.append([IGNORE] * (len(image) + 3) + [layout.sot_id] + [IGNORE] * len(question) + [*answer, layout.eot_id])
    length = max(map(len, rows))
    ids = torch.tensor([r + [layout.pad_id] * (length - len(r)) for r in rows])
    labels = torch.tensor([t + [IGNORE] * (length - len(t)) for t in targets])
    with torch.no_grad():
        logits = model(ids, mmu_attention_mask(ids, layout))
        expected = _cross_entropy(logits[:, :-1], labels[:, 1:])
    assert torch.allclose(loss, expected, rtol=1e-6, atol=0), (loss.item(), expected.item())


def test_lm_loss_cuts_long_text_without_an_eot_like_the_reference(model):
    """A text longer than max_seq_len is cut, and the cut row has no <|eot|> to predict (the reference:
    "we do not add the eos token if the text length exceeds the max sequence length")."""
    from canvaslab.engines.unified.attention import lm_attention_mask

    layout = model.layout
    long, short = list(range(5, 25)), [30, 31]
    with torch.no_grad():
        loss = lm_loss(model, layout, [long, short], max_seq_len=8)
    rows = [[layout.sot_id, *long][:8], [layout.sot_id, *short, layout.eot_id]]
    ids = torch.tensor([r + [layout.pad_id] * (8 - len(r)) for r in rows])
    labels = torch.tensor([r + [IGNORE] * (8 - len(r)) for r in rows])
    with torch.no_grad():
        logits = model(ids, lm_attention_mask(ids, layout))
        expected = _cross_entropy(logits[:, :-1], labels[:, 1:])
    assert torch.allclose(loss, expected, rtol=1e-6, atol=0), (loss.item(), expected.item())
