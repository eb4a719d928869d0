"""Token sequences in Show-o's formats, built from already tokenized text and image token ids.

Generation (text-to-image, inpainting, extrapolation), as the reference's `t2i_gen` prompt:

    [PAD]... <|t2i|> <|sot|> text... <|eot|> <|soi|> image tokens... <|eoi|>
    \\_________ text part: max_text_len + 1 tokens, left-padded ________/

Text longer than the text part is cut and ends with <|eot|>. The unconditional sequence used for
classifier-free guidance is the same with empty text: <|t2i|> <|sot|> <|eot|>.

Understanding, as the reference's inference script (VQ tokens, no CLIP):

    <|mmu|> <|soi|> image tokens... <|eoi|> <|sot|> question...

Several rows are left-padded with [PAD] to one length (the reference runs one row at a time); the
attention masks and position ids make a padded row compute exactly what it computes alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from canvaslab.engines.unified.tokens import TokenLayout
from canvaslab.errors import InputError


def t2i_sequences(
    layout: TokenLayout, text_ids: Sequence[Sequence[int]], image_ids: torch.Tensor, *, max_text_len: int
) -> torch.Tensor:
    """Generation sequences (B, max_text_len + 1 + N + 2) for text ids per row and image ids (B, N)."""
    if len(text_ids) != image_ids.shape[0]:
        raise InputError(f"got {len(text_ids)} texts for {image_ids.shape[0]} images")
    text_len = max_text_len + 1  # the reference counts the task token in
    rows = [_t2i_text_part(layout, list(ids), text_len) for ids in text_ids]
    text = torch.tensor(rows, dtype=torch.long, device=image_ids.device)
    soi = torch.full((len(rows), 1), layout.soi_id, dtype=torch.long, device=image_ids.device)
    eoi = torch.full_like(soi, layout.eoi_id)
    return torch.cat([text, soi, image_ids.long(), eoi], dim=1)


def _t2i_text_part(layout: TokenLayout, ids: list[int], text_len: int) -> list[int]:
    if not ids or ids[0] != layout.sot_id:
        ids = [layout.sot_id, *ids]
    ids = [layout.t2i_id, *ids, layout.eot_id]
    if len(ids) > text_len:
        return ids[: text_len - 1] + [layout.eot_id]
    return [layout.pad_id] * (text_len - len(ids)) + ids


def mmu_sequences(layout: TokenLayout, image_ids: torch.Tensor, text_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Understanding prompts (B, L): image tokens then <|sot|> and the question, left-padded to one length."""
    if len(text_ids) != image_ids.shape[0]:
        raise InputError(f"got {len(text_ids)} questions for {image_ids.shape[0]} images")
    device = image_ids.device
    rows = []
    for image, ids in zip(image_ids.long(), text_ids):
        head = torch.tensor([layout.mmu_id, layout.soi_id], device=device)
        tail = torch.tensor([layout.eoi_id, layout.sot_id, *ids], dtype=torch.long, device=device)
        rows.append(torch.cat([head, image, tail]))
    length = max(len(row) for row in rows)
    padded = [torch.cat([torch.full((length - len(row),), layout.pad_id, device=device), row]) for row in rows]
    return torch.stack(padded)
