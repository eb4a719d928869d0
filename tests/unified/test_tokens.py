"""The id layout (checked against the released Show-o numbers) and the sequence formats."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from canvaslab.engines.unified.config import UnifiedConfig, tiny_unified_config  # noqa: E402
from canvaslab.engines.unified.prompts import mmu_sequences, t2i_sequences  # noqa: E402
from canvaslab.engines.unified.tokens import MASKED, TokenLayout  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402

RELEASED = TokenLayout.from_config(UnifiedConfig())
TINY = TokenLayout.from_config(tiny_unified_config())


def test_released_layout_matches_show_o_ids():
    # config.json of showlab/show-o: vocab_size 58498, llm_vocab_size 50295, codebook 8192, 10 new tokens
    specials = ["[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>"]
    assert [RELEASED.special_id(token) for token in specials] == list(range(50295, 50305))
    assert (RELEASED.pad_id, RELEASED.soi_id, RELEASED.eoi_id, RELEASED.t2i_id, RELEASED.mmu_id) == (50295, 50296, 50297, 50300, 50301)
    assert RELEASED.image_offset == 50305
    assert RELEASED.mask_id == 58497 == UnifiedConfig().mask_token_id
    assert RELEASED.vocab_size == 58498
    assert RELEASED.sot_id == RELEASED.eot_id == 50256


def test_codes_and_ids_convert_both_ways_with_masked_positions():
    codes = torch.tensor([[0, 8191, MASKED, 5]])
    ids = RELEASED.codes_to_ids(codes)
    assert ids.tolist() == [[50305, 58496, 58497, 50310]]
    assert torch.equal(RELEASED.ids_to_codes(ids), codes)
    assert RELEASED.is_image_id(ids).tolist() == [[True, True, False, True]]


@pytest.mark.parametrize("bad", [8192, -2])
def test_out_of_range_codes_are_refused(bad):
    with pytest.raises(InputError, match="image codes must be in"):
        RELEASED.codes_to_ids(torch.tensor([bad]))


def test_text_ids_cannot_become_codes():
    with pytest.raises(InputError, match="outside the image range"):
        RELEASED.ids_to_codes(torch.tensor([RELEASED.soi_id]))


def test_config_with_an_inconsistent_vocabulary_is_refused():
    with pytest.raises(InputError, match="does not fit Show-o's layout"):
        UnifiedConfig(vocab_size=58499)


def test_unknown_special_token_is_refused():
    with pytest.raises(InputError, match="unknown special token"):
        RELEASED.special_id("<|foo|>")


def test_t2i_sequence_left_pads_the_text_part_and_wraps_the_image():
    image = TINY.codes_to_ids(torch.tensor([[1, MASKED]]))
    rows = t2i_sequences(TINY, [[10, 11]], image, max_text_len=6)
    t = TINY
    assert rows.tolist() == [[t.pad_id, t.pad_id, t.t2i_id, t.sot_id, 10, 11, t.eot_id, t.soi_id, t.image_offset + 1, t.mask_id, t.eoi_id]]


def test_t2i_sequence_keeps_an_existing_sot_and_gives_empty_text_sot_eot():
    image = TINY.codes_to_ids(torch.tensor([[1], [2]]))
    rows = t2i_sequences(TINY, [[TINY.sot_id, 10], []], image, max_text_len=4)
    t = TINY
    assert rows[0, :5].tolist() == [t.pad_id, t.t2i_id, t.sot_id, 10, t.eot_id]
    assert rows[1, :5].tolist() == [t.pad_id, t.pad_id, t.t2i_id, t.sot_id, t.eot_id]


def test_t2i_sequence_cuts_long_text_and_still_ends_it_with_eot():
    image = TINY.codes_to_ids(torch.tensor([[1]]))
    rows = t2i_sequences(TINY, [list(range(10, 30))], image, max_text_len=4)
    assert rows[0, :5].tolist() == [TINY.t2i_id, TINY.sot_id, 10, 11, TINY.eot_id]
    assert rows.shape[1] == 4 + 1 + 1 + 1 + 1


def test_mmu_sequences_put_the_image_first_and_left_pad_short_questions():
    image = TINY.codes_to_ids(torch.tensor([[1, 2], [3, 4]]))
    rows = mmu_sequences(TINY, image, [[10, 11, 12], [13]])
    t, o = TINY, TINY.image_offset
    assert rows.tolist() == [
        [t.mmu_id, t.soi_id, o + 1, o + 2, t.eoi_id, t.sot_id, 10, 11, 12],
        [t.pad_id, t.pad_id, t.mmu_id, t.soi_id, o + 3, o + 4, t.eoi_id, t.sot_id, 13],
    ]


def test_sequence_builders_refuse_mismatched_batches():
    image = TINY.codes_to_ids(torch.tensor([[1]]))
    with pytest.raises(InputError, match="got 2 texts for 1 images"):
        t2i_sequences(TINY, [[1], [2]], image, max_text_len=4)
    with pytest.raises(InputError, match="got 2 questions for 1 images"):
        mmu_sequences(TINY, image, [[1], [2]])
