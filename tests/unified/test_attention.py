"""Omni-attention masks: the exact matrices for short sequences of every kind, and their dtypes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from canvaslab.engines.unified.attention import (  # noqa: E402
    additive_mask,
    decode_attention_mask,
    extrapolation_attention_mask,
    inpainting_attention_mask,
    left_padding,
    lm_attention_mask,
    mmu_attention_mask,
    position_ids,
    t2i_attention_mask,
)
from canvaslab.engines.unified.config import tiny_unified_config  # noqa: E402
from canvaslab.engines.unified.tokens import TokenLayout  # noqa: E402

LAYOUT = TokenLayout.from_config(tiny_unified_config())
PAD, SOI, EOI, T2I, MMU = LAYOUT.pad_id, LAYOUT.soi_id, LAYOUT.eoi_id, LAYOUT.t2i_id, LAYOUT.mmu_id
SOT, EOT = LAYOUT.sot_id, LAYOUT.eot_id
A, B, C = 10, 11, 12  # text tokens
I1, I2 = LAYOUT.image_offset + 7, LAYOUT.mask_id  # a given image token and a masked one


def allowed(mask: torch.Tensor) -> list[list[str]]:
    """Additive mask -> per row a string of 1 (may attend) / 0, for readable comparisons."""
    assert mask.ndim == 4 and mask.shape[1] == 1
    return [["".join("1" if v == 0 else "0" for v in row) for row in batch[0].tolist()] for batch in mask]


def ids(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows)


def test_t2i_mask_is_causal_over_text_bidirectional_over_the_image_and_hides_padding():
    sequence = ids([PAD, PAD, T2I, SOT, A, EOT, SOI, I1, I2, EOI])
    assert allowed(t2i_attention_mask(sequence, LAYOUT)) == [[
        "1000000000",  # pads stay causal among themselves (no empty row)
        "1100000000",
        "0010000000",  # text after the padding: causal, padding hidden
        "0011000000",
        "0011100000",
        "0011110000",
        "0011111111",  # <|soi|>, image tokens and <|eoi|> see every non-pad token, before and after
        "0011111111",
        "0011111111",
        "0011111111",
    ]]


def test_t2i_mask_without_hiding_padding_is_the_reference_training_default():
    sequence = ids([PAD, T2I, A, SOI, I1, EOI])
    assert allowed(t2i_attention_mask(sequence, LAYOUT, hide_padding=False)) == [[
        "100000",
        "110000",
        "111000",
        "111111",
        "111111",
        "111111",
    ]]


def test_t2i_mask_handles_each_row_of_a_batch_on_its_own():
    batch = ids([PAD, PAD, T2I, EOT, SOI, I1, EOI], [T2I, SOT, A, EOT, SOI, I2, EOI])
    padded, unpadded = allowed(t2i_attention_mask(batch, LAYOUT))
    assert padded[2:] == ["0010000", "0011000", "0011111", "0011111", "0011111"]
    assert unpadded == ["1000000", "1100000", "1110000", "1111000", "1111111", "1111111", "1111111"]


def test_inpainting_and_extrapolation_use_the_generation_mask():
    sequence = ids([PAD, T2I, SOT, A, EOT, SOI, I1, I2, I1, EOI])
    expected = t2i_attention_mask(sequence, LAYOUT)
    assert torch.equal(inpainting_attention_mask(sequence, LAYOUT), expected)
    assert torch.equal(extrapolation_attention_mask(sequence, LAYOUT), expected)


def test_mmu_mask_opens_the_prefix_up_to_eoi_and_is_causal_after_it():
    sequence = ids([MMU, SOI, I1, I1, EOI, SOT, A, B])
    assert allowed(mmu_attention_mask(sequence, LAYOUT)) == [[
        "11111000",  # the task token already sees the whole image, as in the reference
        "11111000",
        "11111000",
        "11111000",
        "11111000",
        "11111100",
        "11111110",
        "11111111",
    ]]


def test_mmu_mask_hides_left_padding_from_real_tokens_only():
    sequence = ids([PAD, MMU, SOI, I1, EOI, SOT, A], [MMU, SOI, I1, EOI, SOT, A, B])
    padded, unpadded = allowed(mmu_attention_mask(sequence, LAYOUT))
    assert padded == ["1111100", "0111100", "0111100", "0111100", "0111100", "0111110", "0111111"]
    assert unpadded == ["1111000", "1111000", "1111000", "1111000", "1111100", "1111110", "1111111"]


def test_lm_mask_is_causal_and_ignores_right_padding_but_hides_left_padding():
    assert allowed(lm_attention_mask(ids([A, B, EOT, PAD]), LAYOUT)) == [["1000", "1100", "1110", "1111"]]
    assert allowed(lm_attention_mask(ids([PAD, A, B]), LAYOUT)) == [["100", "010", "011"]]


def test_decode_mask_lets_the_new_token_see_everything_but_left_padding():
    pad = left_padding(ids([PAD, PAD, A, B], [A, B, C, EOT]), PAD)
    assert allowed(decode_attention_mask(pad)) == [["0011"], ["1111"]]


def test_position_ids_skip_left_padding():
    pad = left_padding(ids([PAD, PAD, A, B, C], [A, B, C, A, B]), PAD)
    assert position_ids(pad).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_additive_values_are_zero_and_the_finite_minimum_of_the_dtype(dtype):
    mask = t2i_attention_mask(ids([PAD, T2I, SOI, I1, EOI]), LAYOUT, dtype=dtype)
    assert mask.dtype == dtype
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(dtype).min}
    assert torch.isfinite(mask).all()


def test_additive_mask_keeps_batch_and_query_key_shape():
    flags = torch.tensor([[[[True, False, True]]]])
    assert additive_mask(flags).tolist() == [[[[0.0, torch.finfo(torch.float32).min, 0.0]]]]
