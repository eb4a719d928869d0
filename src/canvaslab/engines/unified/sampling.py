"""Decoding: MaskGIT for image tokens (generation, inpainting, extrapolation) and autoregressive text.

MaskGIT, step by step as the reference's `t2i_generate` does it (so a seeded `torch.Generator`
gives the reference's tokens):

1. logits of the image span (positions -(N+1)..-2 of the sequence), restricted to the codebook;
   with guidance, one batch of [conditional rows; unconditional rows] whose image tokens are the
   current ones, combined as `(1 + w) * cond - w * uncond`;
2. softmax, then one `torch.multinomial` draw per position (randomness #1, shape (B*N, codebook));
   given positions keep their code;
3. `ratio = (step + 1) / steps`, mask ratio `schedule(ratio)` (cosine: cos(pi/2 * ratio)), computed
   in fp32 like the reference; `mask_len = floor(N * mask_ratio)`, at least 1 and at most
   (unknown - 1) per row;
4. temperature annealed multiplicatively: `temperature *= 1 - ratio` (so step k uses
   T0 * prod_{j<=k} (1 - ratio_j));
5. confidence = log(p of the drawn code) + temperature * Gumbel noise (randomness #2, a uniform draw
   of shape (B, N)); given and already fixed positions get confidence log(fp32 max), so they are
   never re-masked; the `mask_len` least confident positions become unknown again;
6. the codes drawn in the last step are the result (every position filled).

One deliberate difference: a grid with nothing to fill is returned as is (the reference would still
re-draw one given token).

Text: next-token decoding with greedy or sampled choice (temperature, top-k, `torch.multinomial`
with the generator), stopping at <|eot|>; with a key/value cache (default) or by re-running the
whole sequence each step, as the reference does. Both give the same tokens. Rows are left-padded
(`prompts.mmu_sequences`), with positions that skip the padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence

import torch

from canvaslab.engines.unified.attention import (
    decode_attention_mask,
    left_padding,
    mmu_attention_mask,
    position_ids,
    t2i_attention_mask,
)
from canvaslab.engines.unified.model import UnifiedModel
from canvaslab.engines.unified.prompts import t2i_sequences
from canvaslab.engines.unified.tokens import MASKED
from canvaslab.errors import InputError

StepCallback = Callable[[int, torch.Tensor], None]
# Yields the last position's logits (B, vocab), receives the chosen tokens (B,).
DecodeSteps = Generator[torch.Tensor, torch.Tensor, None]


# -- mask schedules: fraction of the image still masked after a given fraction of the steps -------


def cosine_schedule(t: torch.Tensor) -> torch.Tensor:
    return torch.cos(t * math.pi * 0.5)


def linear_schedule(t: torch.Tensor) -> torch.Tensor:
    return (1 - t).clamp(min=1e-6, max=1.0)


def power_schedule(exponent: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: (1.0 - t**exponent).clamp(min=1e-6, max=1.0)


def mask_schedule(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """`cosine` (Show-o's default), `linear`, or `powP` (e.g. `pow2`), named as in the reference."""
    if name == "cosine":
        return cosine_schedule
    if name == "linear":
        return linear_schedule
    if name.startswith("pow"):
        try:
            return power_schedule(float(name[3:]))
        except ValueError:
            pass
    raise InputError(f"unknown mask schedule {name!r}: choose cosine, linear or powP (e.g. pow2)")


def masked_after_step(num_tokens: int, unknown: int, step: int, steps: int, schedule: str = "cosine") -> int:
    """How many positions are unknown again after `step` (0-based) when `unknown` were unknown before it."""
    mask_ratio = mask_schedule(schedule)(torch.tensor(1.0 * (step + 1) / steps))
    return max(1, min(unknown - 1, int((num_tokens * mask_ratio).floor())))


# -- MaskGIT ---------------------------------------------------------------------------------------


def generate_image_codes(
    model: UnifiedModel,
    text_ids: Sequence[Sequence[int]],
    codes: torch.Tensor,
    *,
    max_text_len: int = 128,
    guidance_scale: float = 0.0,
    steps: int = 18,
    temperature: float = 1.0,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Fill the `MASKED` positions of code grids (B, h, w) or (B, N) from a prompt per row.

    All masked = text-to-image; some = inpainting or extrapolation (the caller shifts the grid and
    masks the new part). Returns codes of the input's shape, with every given code unchanged.
    """
    _check_decode_args(steps, temperature, guidance_scale)
    mask_schedule(schedule)  # an unknown name fails before any work
    layout = model.layout
    shape = codes.shape
    flat = codes.reshape(shape[0], -1).to(model.device)
    if not bool((flat == MASKED).any()):
        return codes.clone()
    image_ids = layout.codes_to_ids(flat)
    input_ids = t2i_sequences(layout, text_ids, image_ids, max_text_len=max_text_len)
    uncond_ids = None
    if guidance_scale > 0:
        uncond_ids = t2i_sequences(layout, [[] for _ in text_ids], image_ids, max_text_len=max_text_len)
    rows = input_ids if uncond_ids is None else torch.cat([input_ids, uncond_ids])
    mask = t2i_attention_mask(rows, layout, dtype=model.dtype)
    result = maskgit_decode(
        model,
        input_ids,
        attention_mask=mask,
        uncond_input_ids=uncond_ids,
        text_len=max_text_len + 1,
        guidance_scale=guidance_scale,
        steps=steps,
        temperature=temperature,
        schedule=schedule,
        generator=generator,
        callback=callback,
    )
    return result.reshape(shape).to(codes.device)


@torch.no_grad()
def maskgit_decode(
    model: UnifiedModel,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor,
    uncond_input_ids: torch.Tensor | None = None,
    text_len: int,
    guidance_scale: float = 0.0,
    steps: int = 18,
    temperature: float = 1.0,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """The reference's MaskGIT loop on ready-made sequences ending in <|soi|> image <|eoi|>.

    `attention_mask` covers `input_ids` (and `uncond_input_ids` below them when guiding); `text_len`
    is the length of the text part, which guidance swaps for the unconditional one. Returns the codes
    (B, N). `callback(step, codes)` sees the codes after each step, `MASKED` where still unknown.
    """
    _check_decode_args(steps, temperature, guidance_scale)
    layout = model.layout
    num_tokens = input_ids.shape[1] - text_len - 2
    image = slice(input_ids.shape[1] - num_tokens - 1, input_ids.shape[1] - 1)
    input_ids = input_ids.clone()
    codes = layout.ids_to_codes(input_ids[:, image])
    noise_schedule = mask_schedule(schedule)
    guided = uncond_input_ids is not None and guidance_scale > 0
    sampled = codes
    for step in range(steps):
        uncond = uncond_input_ids if guided else None
        logits = _image_logits(model, input_ids, uncond, attention_mask, text_len, num_tokens, guidance_scale)
        probs = logits.softmax(dim=-1)
        sampled = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)[:, 0].view(codes.shape)
        unknown = codes == MASKED
        sampled = torch.where(unknown, sampled, codes)
        ratio = 1.0 * (step + 1) / steps
        mask_ratio = noise_schedule(torch.tensor(ratio))
        selected = torch.gather(probs, -1, sampled[..., None]).squeeze(-1)
        selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)
        mask_len = (num_tokens * mask_ratio).floor().unsqueeze(0).to(probs.device)
        mask_len = torch.max(torch.tensor([1], device=probs.device), torch.min(unknown.sum(dim=-1, keepdim=True) - 1, mask_len))
        temperature = temperature * (1.0 - ratio)
        remask = _least_confident(mask_len, selected, temperature, generator)
        codes = torch.where(remask, MASKED, sampled)
        input_ids[:, image] = layout.codes_to_ids(codes)
        if callback is not None:
            callback(step, codes.clone())
    return sampled


def _check_decode_args(steps: int, temperature: float, guidance_scale: float) -> None:
    if steps < 1:
        raise InputError(f"steps must be at least 1; got {steps}")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0; got {temperature}")
    if guidance_scale < 0:
        raise InputError(f"guidance_scale must be >= 0; got {guidance_scale}")


def _image_logits(
    model: UnifiedModel,
    input_ids: torch.Tensor,
    uncond_input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor,
    text_len: int,
    num_tokens: int,
    guidance_scale: float,
) -> torch.Tensor:
    """Codebook logits (B, N, codebook) of the image positions, guided when an unconditional batch is given."""
    layout = model.layout
    codebook = slice(layout.image_offset, layout.mask_id)
    if uncond_input_ids is None:
        logits = model(input_ids, attention_mask, logits_to_keep=num_tokens + 1)
        return logits[:, :-1, codebook]
    uncond = torch.cat([uncond_input_ids[:, :text_len], input_ids[:, text_len:]], dim=1)
    cond_logits, uncond_logits = model(torch.cat([input_ids, uncond]), attention_mask, logits_to_keep=num_tokens + 1).chunk(2)
    logits = (1 + guidance_scale) * cond_logits - guidance_scale * uncond_logits
    return logits[:, :-1, codebook]


def _log(t: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    return torch.log(t.clamp(min=eps))


def _gumbel_noise(t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.zeros_like(t).uniform_(0, 1, generator=generator)
    return -_log(-_log(noise))


def _least_confident(mask_len: torch.Tensor, probs: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """True at the `mask_len` (per row) positions of lowest Gumbel-perturbed log-probability."""
    confidence = _log(probs) + temperature * _gumbel_noise(probs, generator)
    cut_off = torch.gather(torch.sort(confidence, dim=-1).values, 1, mask_len.long())
    return confidence < cut_off


# -- text -----------------------------------------------------------------------------------------


@torch.no_grad()
def generate_text(
    model: UnifiedModel,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int = 100,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    stop_id: int | None = None,
) -> list[list[int]]:
    """Answer tokens per row for understanding prompts (B, L) from `prompts.mmu_sequences`.

    Greedy by default (the reference's top_k=1); `sample=True` divides the logits by `temperature`,
    keeps the `top_k` best and draws with `generator` (one (B, vocab) draw per step). Each row's list
    ends with its stop token (<|eot|> unless `stop_id`) when one was produced, as in the reference.
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
    if not sample and (temperature != 1.0 or top_k is not None):
        raise InputError("temperature and top_k only apply when sampling: pass sample=True or leave them out")
    if sample and temperature <= 0:
        raise InputError(f"temperature must be > 0 when sampling; got {temperature}")
    layout = model.layout
    stop_id = layout.eot_id if stop_id is None else stop_id
    input_ids = input_ids.to(model.device)
    step = _cached_steps(model, input_ids) if use_cache else _uncached_steps(model, input_ids)
    answers: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=model.device)
    logits = next(step)
    for _ in range(max_new_tokens):
        token = _choose(logits, sample, temperature, top_k, generator)
        for row in (~done).nonzero()[:, 0].tolist():
            answers[row].append(int(token[row]))
        done |= token == stop_id
        if bool(done.all()):
            break
        logits = step.send(token)
    step.close()
    return answers


def _choose(logits: torch.Tensor, sample: bool, temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    if not sample:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


def _cached_steps(model: UnifiedModel, input_ids: torch.Tensor) -> DecodeSteps:
    """Generator: yields last-position logits, receives the next tokens; prefill once, then one token a step."""
    layout = model.layout
    pad = left_padding(input_ids, layout.pad_id)
    positions = position_ids(pad)
    cache = model.new_cache()
    mask = mmu_attention_mask(input_ids, layout, dtype=model.dtype)
    logits = model(input_ids, mask, position_ids=positions, cache=cache, logits_to_keep=1)
    while True:
        token = yield logits[:, -1]
        pad = torch.cat([pad, torch.zeros_like(pad[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        mask = decode_attention_mask(pad, dtype=model.dtype)
        logits = model(token[:, None], mask, position_ids=positions, cache=cache)


def _uncached_steps(model: UnifiedModel, input_ids: torch.Tensor) -> DecodeSteps:
    """Generator like `_cached_steps`, re-running the whole sequence every step (the reference's way)."""
    layout = model.layout
    sequence = input_ids
    while True:
        mask = mmu_attention_mask(sequence, layout, dtype=model.dtype)
        positions = position_ids(left_padding(sequence, layout.pad_id))
        logits = model(sequence, mask, position_ids=positions, logits_to_keep=1)
        token = yield logits[:, -1]
        sequence = torch.cat([sequence, token[:, None]], dim=1)
