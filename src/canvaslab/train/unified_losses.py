"""The unified model's three training losses, built from rows of text and images.

The targets are the reference's (Show-o's training/prompting_utils.py and the loss slices in
models/modeling_showo.py), position for position:
- t2i (`t2i_loss`): the image's MAGVIT codes with a random subset replaced by the mask token; the
  fraction masked is cos(pi/2 * t) for t ~ U(0, 1), at least `min_masking_rate` and one token (the
  reference's `mask_or_random_replace_tokens` with the cosine schedule), in the generation sequence
  `[PAD].. <|t2i|> <|sot|> text <|eot|> <|soi|> image <|eoi|>` under the t2i omni-attention mask.
  Cross-entropy, predicted in place (no shift), on everything from `<|soi|>` on: `<|soi|>`, the masked
  image tokens and `<|eoi|>` (the unmasked ones are ignored). Captions are replaced by "" with
  probability `caption_dropout` (unconditional rows for guidance).
- lm (`lm_loss`): `<|sot|> text <|eot|>`, right-padded; next-token cross-entropy, padding ignored. A text
  longer than `max_seq_len` is cut and then has no `<|eot|>` (it did not end there).
- mmu (`mmu_loss`): `<|mmu|> <|soi|> image <|eoi|> <|sot|> question answer <|eot|>`, right-padded;
  next-token cross-entropy on `<|sot|>` (predicted after `<|eoi|>`), the answer and `<|eot|>`; the
  question is context only (the reference's captioning rows have no question: all their text is target).
Every random draw comes from the `generator` passed in, in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from canvaslab.engines.unified.attention import lm_attention_mask, mmu_attention_mask, t2i_attention_mask
from canvaslab.engines.unified.prompts import t2i_sequences
from canvaslab.engines.unified.tokens import TokenLayout

IGNORE = -100


def mask_tokens(
    ids: torch.Tensor, mask_id: int, generator: torch.Generator, *, min_masking_rate: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids with masks, labels (-100 where not masked), mask ratio per row) for image token ids (B, N)."""
    batch, length = ids.shape
    t = torch.rand(batch, generator=generator)
    ratio = torch.cos(t * math.pi / 2).clamp(min=min_masking_rate)
    count = (length * ratio).round().clamp(min=1)
    order = torch.rand(batch, length, generator=generator).argsort(dim=-1)
    masked = (order < count[:, None]).to(ids.device)
    inputs = torch.where(masked, torch.full_like(ids, mask_id), ids)
    labels = torch.where(masked, ids, torch.full_like(ids, IGNORE))
    return inputs, labels, ratio


def t2i_loss(
    model: torch.nn.Module, layout: TokenLayout, text_ids: Sequence[Sequence[int]], image_ids: torch.Tensor,
    generator: torch.Generator, *, max_text_len: int, caption_dropout: float, min_masking_rate: float,
    label_smoothing: float = 0.0, dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean mask ratio) for image token ids (B, N) and their captions' text ids."""
    drop = torch.rand(len(text_ids), generator=generator) < caption_dropout
    texts = [[] if d else list(ids) for d, ids in zip(drop.tolist(), text_ids)]
    inputs, labels, ratio = mask_tokens(image_ids, layout.mask_id, generator, min_masking_rate=min_masking_rate)
    sequence = t2i_sequences(layout, texts, inputs, max_text_len=max_text_len)
    mask = t2i_attention_mask(sequence, layout, dtype=dtype)
    n = image_ids.shape[1]
    logits = model(sequence, mask, logits_to_keep=n + 2)  # <|soi|> image <|eoi|>, the end of the sequence
    soi = torch.full_like(labels[:, :1], layout.soi_id)
    targets = torch.cat([soi, labels, torch.full_like(soi, layout.eoi_id)], dim=1)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           label_smoothing=label_smoothing)
    return loss, ratio.mean()


def _right_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    length = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (length - len(r)) for r in rows], dtype=torch.long, device=device)


def _next_token_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    shifted, targets = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           label_smoothing=label_smoothing)


def lm_loss(
    model: torch.nn.Module, layout: TokenLayout, text_ids: Sequence[Sequence[int]], *, max_seq_len: int,
    label_smoothing: float = 0.0, dtype: torch.dtype = torch.float32, device: torch.device | None = None,
) -> torch.Tensor:
    rows = [[layout.sot_id, *ids, layout.eot_id][:max_seq_len] for ids in text_ids]
    ids = _right_pad(rows, layout.pad_id, device or torch.device("cpu"))
    labels = _right_pad([list(r) for r in rows], IGNORE, ids.device)
    logits = model(ids, lm_attention_mask(ids, layout, dtype=dtype))
    return _next_token_loss(logits, labels, label_smoothing)


def mmu_loss(
    model: torch.nn.Module, layout: TokenLayout, image_ids: torch.Tensor, question_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]], *, max_seq_len: int, label_smoothing: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    rows, targets = [], []
    for image, question, answer in zip(image_ids.tolist(), question_ids, answer_ids):
        question = list(question)[: max_seq_len // 2]
        answer = list(answer)[: max_seq_len - len(question) - 2]
        context = [layout.mmu_id, layout.soi_id, *image, layout.eoi_id]
        rows.append([*context, layout.sot_id, *question, *answer, layout.eot_id])
        targets.append([IGNORE] * len(context) + [layout.sot_id] + [IGNORE] * len(question) + [*answer, layout.eot_id])
    ids = _right_pad(rows, layout.pad_id, image_ids.device)
    labels = _right_pad(targets, IGNORE, image_ids.device)
    logits = model(ids, mmu_attention_mask(ids, layout, dtype=dtype))
    return _next_token_loss(logits, labels, label_smoothing)
