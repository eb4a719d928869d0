"""MaskGIT and text decoding: determinism, invariants, the cosine schedule, and agreement with loops
written from the reference's description (same generator -> same tokens)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from canvaslab.engines.unified.attention import mmu_attention_mask, t2i_attention_mask  # noqa: E402
from canvaslab.engines.unified.prompts import mmu_sequences, t2i_sequences  # noqa: E402
from canvaslab.engines.unified.sampling import (  # noqa: E402
    generate_image_codes,
    generate_text,
    masked_after_step,
)
from canvaslab.engines.unified.tokens import MASKED  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402

PROMPTS = [[10, 11, 12], [13, 14]]
MAX_TEXT = 6


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inpainting_grid() -> torch.Tensor:
    codes = torch.randint(0, 8192, (2, 4, 4), generator=seeded(99))
    codes[0, 1:3, 1:3] = MASKED  # a hole
    codes[1, :, 2:] = MASKED  # the right half: extrapolation to the right
    return codes


def reference_t2i_generate(
    model, input_ids, uncond_input_ids, attention_mask, *, guidance_scale, steps, temperature, generator, text_len, num_tokens
):
    """The reference's MaskGIT loop as its code reads, on full logits, with the mask *id* as sentinel."""
    layout = model.layout
    mask_id, offset = layout.mask_id, layout.image_offset
    input_ids = input_ids.clone()
    current = input_ids[:, -(num_tokens + 1) : -1].clone()
    current = torch.where(current == mask_id, mask_id, current - offset)
    uncond_prefix = uncond_input_ids[:, :text_len] if uncond_input_ids is not None else None
    for step in range(steps):
        if uncond_prefix is not None and guidance_scale > 0:
            uncond = torch.cat([uncond_prefix, input_ids[:, text_len:]], dim=1)
            cond_logits, uncond_logits = model(torch.cat([input_ids, uncond]), attention_mask).chunk(2)
            logits = (1 + guidance_scale) * cond_logits - guidance_scale * uncond_logits
        else:
            logits = model(input_ids, attention_mask)
        logits = logits[:, -(num_tokens + 1) : -1, offset:-1]
        probs = logits.softmax(dim=-1)
        sampled = torch.multinomial(probs.reshape(-1, logits.size(-1)), 1, generator=generator)[:, 0].view(*logits.shape[:-1])
        unknown = current == mask_id
        sampled = torch.where(unknown, sampled, current)
        ratio = 1.0 * (step + 1) / steps
        mask_ratio = torch.cos(torch.tensor(ratio) * math.pi * 0.5)
        selected = torch.gather(probs, -1, sampled.long()[..., None]).squeeze(-1)
        selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)
        mask_len = (num_tokens * mask_ratio).floor().unsqueeze(0)
        mask_len = torch.max(torch.tensor([1]), torch.min(unknown.sum(dim=-1, keepdim=True) - 1, mask_len))
        temperature = temperature * (1.0 - ratio)
        noise = torch.zeros_like(selected).uniform_(0, 1, generator=generator)
        gumbel = -torch.log((-torch.log(noise.clamp(min=1e-20))).clamp(min=1e-20))
        confidence = torch.log(selected.clamp(min=1e-20)) + temperature * gumbel
        cut_off = torch.gather(torch.sort(confidence, dim=-1).values, 1, mask_len.long())
        masking = confidence < cut_off
        input_ids[:, -(num_tokens + 1) : -1] = torch.where(masking, mask_id, sampled + offset)
        current = torch.where(masking, mask_id, sampled)
    return sampled


@pytest.mark.parametrize("guidance_scale", [0.0, 3.0])
@pytest.mark.parametrize("grid", ["t2i", "inpainting"])
def test_same_tokens_as_the_reference_loop_for_the_same_generator(model, guidance_scale, grid):
    layout = model.layout
    codes = torch.full((2, 4, 4), MASKED) if grid == "t2i" else inpainting_grid()
    with torch.no_grad():
        ours = generate_image_codes(model, PROMPTS, codes, max_text_len=MAX_TEXT, guidance_scale=guidance_scale,
                                    steps=5, temperature=1.0, generator=seeded(7))
        input_ids = t2i_sequences(layout, PROMPTS, layout.codes_to_ids(codes.reshape(2, -1)), max_text_len=MAX_TEXT)
        uncond = t2i_sequences(layout, [[], []], layout.codes_to_ids(codes.reshape(2, -1)), max_text_len=MAX_TEXT)
        rows = torch.cat([input_ids, uncond]) if guidance_scale > 0 else input_ids
        expected = reference_t2i_generate(
            model, input_ids, uncond if guidance_scale > 0 else None, t2i_attention_mask(rows, layout),
            guidance_scale=guidance_scale, steps=5, temperature=1.0, generator=seeded(7), text_len=MAX_TEXT + 1, num_tokens=16)
    assert torch.equal(ours.reshape(2, -1), expected)


def test_seeded_generation_is_deterministic_and_seed_dependent(model):
    codes = torch.full((2, 4, 4), MASKED)
    with torch.no_grad():
        first = generate_image_codes(model, PROMPTS, codes, max_text_len=MAX_TEXT, steps=4, generator=seeded(1))
        again = generate_image_codes(model, PROMPTS, codes, max_text_len=MAX_TEXT, steps=4, generator=seeded(1))
        other = generate_image_codes(model, PROMPTS, codes, max_text_len=MAX_TEXT, steps=4, generator=seeded(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == codes.shape and int(first.min()) >= 0 and int(first.max()) < 8192


@pytest.mark.parametrize("guidance_scale", [0.0, 2.0])
def test_given_tokens_never_change_and_every_hole_is_filled(model, guidance_scale):
    codes = inpainting_grid()
    seen = []
    with torch.no_grad():
        result = generate_image_codes(model, PROMPTS, codes, max_text_len=MAX_TEXT, guidance_scale=guidance_scale,
                                      steps=6, generator=seeded(3), callback=lambda step, c: seen.append(c.reshape(codes.shape)))
    given = codes != MASKED
    assert torch.equal(result[given], codes[given])
    assert not (result == MASKED).any()
    for step_codes in seen:  # at every step, given tokens are intact and committed ones stay committed
        assert torch.equal(step_codes[given], codes[given])
    for before, after in zip(seen, seen[1:]):
        committed = before != MASKED
        assert torch.equal(after[committed], before[committed])


def test_tokens_committed_per_step_follow_the_cosine_schedule(model):
    seen = []
    with torch.no_grad():
        result = generate_image_codes(model, PROMPTS, torch.full((2, 16), MASKED), max_text_len=MAX_TEXT, steps=5,
                                      generator=seeded(4), callback=lambda step, c: seen.append((c == MASKED).sum(dim=1).tolist()))
    # floor(16 * cos(pi/2 * k/5)) for k = 1..5 -> 15, 12, 9, 4, then at least 1 (the reference keeps one
    # masked in its last step, but returns that step's draws, so the result is complete)
    assert seen == [[15, 15], [12, 12], [9, 9], [4, 4], [1, 1]]
    assert [masked_after_step(16, u, k, 5) for k, u in enumerate([16, 15, 12, 9, 4])] == [15, 12, 9, 4, 1]
    assert not (result == MASKED).any()


def test_small_holes_are_capped_by_what_is_still_unknown(model):
    codes = torch.randint(0, 8192, (1, 16), generator=seeded(5))
    codes[0, :6] = MASKED
    seen = []
    with torch.no_grad():
        generate_image_codes(model, PROMPTS[:1], codes, max_text_len=MAX_TEXT, steps=5, generator=seeded(5),
                             callback=lambda step, c: seen.append(int((c == MASKED).sum())))
    assert seen == [5, 4, 3, 2, 1]  # min(unknown - 1, floor(16 * cos(...))): one committed per step


def test_a_grid_with_nothing_to_fill_comes_back_unchanged(model):
    codes = torch.randint(0, 8192, (1, 4, 4), generator=seeded(6))
    with torch.no_grad():
        assert torch.equal(generate_image_codes(model, PROMPTS[:1], codes, max_text_len=MAX_TEXT, generator=seeded(0)), codes)


def test_bad_decoding_arguments_are_refused(model):
    codes = torch.full((1, 4), MASKED)
    with pytest.raises(InputError, match="steps must be at least 1"):
        generate_image_codes(model, PROMPTS[:1], codes, max_text_len=MAX_TEXT, steps=0)
    with pytest.raises(InputError, match="unknown mask schedule 'spiral'"):
        generate_image_codes(model, PROMPTS[:1], codes, max_text_len=MAX_TEXT, schedule="spiral")


# -- text -----------------------------------------------------------------------------------------


def questions(model):
    layout = model.layout
    image = layout.codes_to_ids(torch.randint(0, 8192, (3, 16), generator=seeded(8)))
    return mmu_sequences(layout, image, [[20, 21, 22, 23], [24], [25, 26]])


def reference_mmu_generate(model, idx, attention_mask, *, max_new_tokens, eot_token):
    """The reference's loop for one row: full recompute, the mask grown by one row and column, top_k=1."""
    result = []
    for _ in range(max_new_tokens):
        logits = model(idx, attention_mask)
        length = attention_mask.shape[-1]
        square = attention_mask.squeeze()
        grown = torch.hstack([square, torch.zeros((length, 1)) + torch.finfo(logits.dtype).min])
        attention_mask = torch.vstack([grown, torch.hstack([square[-1, :], torch.tensor([0])]).unsqueeze(0)])[None, None]
        logits = logits[:, -1, :]
        kth = torch.topk(logits, 1).values
        logits[logits < kth[:, [-1]]] = -float("Inf")
        idx_next = torch.multinomial(logits.softmax(dim=-1), num_samples=1)
        result.append(int(idx_next[0][0]))
        idx = torch.cat((idx, idx_next), dim=1)
        if int(idx_next) == eot_token:
            break
    return result


def test_greedy_answer_matches_the_reference_loop(model):
    row = questions(model)[:1]
    with torch.no_grad():
        mask = mmu_attention_mask(row, model.layout)
        expected = reference_mmu_generate(model, row, mask, max_new_tokens=8, eot_token=model.layout.eot_id)
        assert generate_text(model, row, max_new_tokens=8) == [expected]


@pytest.mark.parametrize("sample", [False, True])
def test_kv_cache_gives_the_same_tokens_as_the_uncached_loop(model, sample):
    rows = questions(model)
    options = {"sample": True, "top_k": 50, "temperature": 1.5} if sample else {}
    with torch.no_grad():
        cached = generate_text(model, rows, max_new_tokens=12, generator=seeded(9), **options)
        uncached = generate_text(model, rows, max_new_tokens=12, generator=seeded(9), use_cache=False, **options)
    assert cached == uncached
    assert all(len(answer) == 12 for answer in cached)


def test_batched_left_padded_rows_answer_like_single_rows(model):
    rows = questions(model)
    pad = model.layout.pad_id
    with torch.no_grad():
        batched = generate_text(model, rows, max_new_tokens=10)
        singles = [generate_text(model, row[row != pad][None], max_new_tokens=10)[0] for row in rows]
    assert batched == singles
    assert len({tuple(answer) for answer in batched}) > 1


def test_sampling_options_without_sampling_are_refused(model):
    with pytest.raises(InputError, match="temperature and top_k only apply when sampling"):
        generate_text(model, questions(model), top_k=5)


def test_answers_stop_at_the_stop_token_and_keep_it(model):
    rows = questions(model)
    with torch.no_grad():
        free = generate_text(model, rows, max_new_tokens=6)
        stop = free[0][2]
        stopped = generate_text(model, rows, max_new_tokens=6, stop_id=stop)
    first = stopped[0]
    assert first == free[0][: free[0].index(stop) + 1] and first[-1] == stop
    for answer, full in zip(stopped, free):
        assert answer == (full[: full.index(stop) + 1] if stop in full else full)
