"""Omni-attention masks: which token may attend to which, one builder per sequence kind.

Show-o builds the attention mask outside the transformer, as an additive 4-D tensor (B, 1, Q, K)
that the backbone adds to the attention scores unchanged: 0 where attending is allowed, a large
negative number where it is not. Each builder below first decides a boolean `allowed[b, i, j]`
(query i may see key j) and then turns it into that additive form with `additive_mask`.

The large negative number is `torch.finfo(dtype).min` of the model's dtype. The reference builds
its masks from int64 token ids and fills with `torch.iinfo(int64).min`, which becomes -9.2e18 once
cast to fp32/bf16 (and -inf in fp16); after the softmax a masked key gets weight exactly 0 either
way, so the logits are the same, and `finfo(dtype).min` stays finite in fp16.

Kinds:

- `t2i_attention_mask` (also `inpainting_attention_mask`, `extrapolation_attention_mask`: those are
  generation sequences with some image tokens given): text causal, the image span <|soi|>..<|eoi|>
  fully bidirectional, padding hidden (the reference's `create_attention_mask_predict_next` with
  `rm_pad_in_image=True`, used for generation and t2i training).
- `mmu_attention_mask`: every token sees the whole prefix up to <|eoi|> (task token, image), the text
  after it is causal (the reference's `create_attention_mask_for_mmu`).
- `lm_attention_mask`: plain causal (what the reference's builder gives for text-only rows).
- `decode_attention_mask`: one new token during cached decoding sees every non-padding key.

Padding: generation rows are left-padded by the reference itself and handled exactly as it does.
For understanding and language rows we add one rule the reference never needed (it decodes one row
at a time): no real token sees a left pad. Right padding (training) is untouched, because causal
rows never reach it.
"""

from __future__ import annotations

import torch

from canvaslab.engines.unified.tokens import TokenLayout


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean (B, 1, Q, K) -> 0 where allowed, `finfo(dtype).min` elsewhere, in `dtype`."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)


def t2i_attention_mask(
    input_ids: torch.Tensor, layout: TokenLayout, *, dtype: torch.dtype = torch.float32, hide_padding: bool = True
) -> torch.Tensor:
    """Generation rows (text-to-image, inpainting, extrapolation, t2i training): (B, 1, L, L) additive.

    - text rows (outside <|soi|>..<|eoi|>) are causal;
    - image rows (<|soi|>, the image tokens, <|eoi|>) see every position, earlier and later;
    - with `hide_padding` (the reference's `rm_pad_in_image=True`, always on for generation): image
      rows do not see [PAD] keys, and text rows after the last [PAD] do not see it or anything before
      it. Pad rows stay causal so that no row is left with nothing to attend to.
    """
    batch, length = input_ids.shape
    causal = _causal(length, input_ids.device).expand(batch, length, length)
    is_pad = input_ids == layout.pad_id
    in_image = _image_span(input_ids, layout)
    if hide_padding:
        last_pad = _last_index(is_pad)  # -1 for rows without padding
        positions = torch.arange(length, device=input_ids.device)
        after_pad = positions[None, :] > last_pad[:, None]
        upto_pad = positions[None, :] <= last_pad[:, None]
        text_allowed = causal & ~(after_pad[:, :, None] & upto_pad[:, None, :])
        image_allowed = (~is_pad)[:, None, :].expand(batch, length, length)
    else:
        text_allowed = causal
        image_allowed = torch.ones_like(causal)
    allowed = torch.where(in_image[:, :, None], image_allowed, text_allowed)
    return additive_mask(allowed[:, None], dtype)


# Inpainting and extrapolation are generation sequences with part of the image given: same mask.
inpainting_attention_mask = t2i_attention_mask
extrapolation_attention_mask = t2i_attention_mask


def mmu_attention_mask(input_ids: torch.Tensor, layout: TokenLayout, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Understanding rows: (B, 1, L, L) additive.

    Every row sees all keys up to and including the row's first <|eoi|> (so the task token and the
    image are bidirectional, and the text sees the whole image) and is causal after it. The reference
    takes the <|eoi|> position of the first row for the whole batch; rows built by `mmu_sequences`
    are left-padded, so each row uses its own. Real tokens never see left padding.
    """
    batch, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)
    is_eoi = input_ids == layout.eoi_id
    no_eoi = torch.full((batch,), -1, dtype=torch.long, device=input_ids.device)
    first_eoi = torch.where(is_eoi.any(dim=1), is_eoi.int().argmax(dim=1), no_eoi)
    prefix = positions[None, :] <= first_eoi[:, None]  # (B, K)
    allowed = _causal(length, input_ids.device)[None] | prefix[:, None, :]
    allowed = _hide_left_padding(allowed, left_padding(input_ids, layout.pad_id))
    return additive_mask(allowed[:, None], dtype)


def lm_attention_mask(input_ids: torch.Tensor, layout: TokenLayout, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Text-only rows: (B, 1, L, L) additive, causal; real tokens never see left padding."""
    batch, length = input_ids.shape
    allowed = _causal(length, input_ids.device).expand(batch, length, length)
    allowed = _hide_left_padding(allowed, left_padding(input_ids, layout.pad_id))
    return additive_mask(allowed[:, None], dtype)


def decode_attention_mask(left_pad: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One new token per row during cached decoding: (B, 1, 1, K) additive over all K keys so far.

    The new token is text after the prefix, so it sees every key except left padding; this is also
    what the reference's growing mask gives (its new row copies the last row, which sees everything).
    """
    return additive_mask(~left_pad[:, None, None, :], dtype)


def left_padding(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, L) True on the [PAD] run at the start of each row (left padding), False elsewhere."""
    return torch.cumsum(input_ids != pad_id, dim=1) == 0


def position_ids(left_pad: torch.Tensor) -> torch.Tensor:
    """Rotary positions that skip left padding, so a padded row computes what it computes alone.

    Only for understanding/language rows: generation rows keep the reference's plain 0..L-1
    positions, pads included, because that is how the released model saw them.
    """
    return (torch.cumsum(~left_pad, dim=1) - 1).clamp(min=0)


def _causal(length: int, device: torch.device) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def _image_span(input_ids: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B, L) True from each <|soi|> to its <|eoi|>, both included."""
    is_soi = input_ids == layout.soi_id
    is_eoi = input_ids == layout.eoi_id
    inside = torch.cumsum(is_soi, dim=1) > torch.cumsum(is_eoi, dim=1)
    return inside | is_soi | is_eoi


def _last_index(flags: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last True per row, -1 when there is none."""
    positions = torch.arange(flags.shape[1], device=flags.device)
    return torch.where(flags, positions, torch.full_like(positions, -1)).amax(dim=1)


def _hide_left_padding(allowed: torch.Tensor, left_pad: torch.Tensor) -> torch.Tensor:
    """Real (non-pad) query rows lose the left-pad keys; pad rows keep theirs (their output is unused)."""
    hidden = (~left_pad)[:, :, None] & left_pad[:, None, :]
    return allowed & ~hidden
