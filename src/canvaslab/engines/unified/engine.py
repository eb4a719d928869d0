"""The unified engine: Show-o's masked-token model as a canvaslab engine, plus the text-to-image and
image-understanding calls that the `generate` and `understand` tasks make directly.

Inpainting (outpainting reaches the engine as inpainting of the new area), step by step:

1. an image smaller than the model's native size (256 px for `show-o`) is mirrored out to it on the
   right/bottom as known context, so the model always sees its trained token raster;
2. MAGVIT codes of the whole canvas; a token is regenerated when ANY of its 16x16 pixels is masked,
   so every masked pixel gets new content (the reference instead thresholds a bicubic-downscaled mask
   at 0.5 and may leave thin masked strokes to the old token);
3. MaskGIT fills the masked tokens, conditioned on the prompt, in windows of the native token grid
   (`fill_codes`): a canvas of the native size is one window; a bigger one is covered by windows that
   advance `n/2 + offset` tokens, so each overlaps `n/2 - offset` tokens of its neighbour (the
   reference's extrapolation offset), filled most-known-first, each conditioned on what is known and
   on the windows before it;
4. the whole grid is decoded once and cropped back; the task composites, so pixels outside the mask
   stay bit-identical.

Generation: the same window fill on an all-masked grid. Classifier-free guidance combines
`(1 + w) * cond - w * uncond`; the unconditional row has empty text, or the negative prompt when one
is given (our extension; the reference has no negative prompt).

Understanding: each image is resized (short side) and centre-cropped to the native square as the
reference's `image_transform` does, tokenized, and asked `USER: \\n<question> ASSISTANT:` in the
reference's VQ prompt format; image x question rows are decoded in batches with the key/value cache.

Randomness comes from a `torch.Generator` on the model's device seeded with the task's seed and
consumed window after window in a fixed order, so a seed reproduces the tokens on one device and
thread count. Models load through `bundle.load_bundle` and one bundle stays cached per (model, MAGVIT,
tokenizer, dtype, device). This module imports torch only inside the functions that run the model, so
listing engines stays light.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from canvaslab.core.notices import notice
from canvaslab.core.progress import listening, report_progress
from canvaslab.engines.base import Engine, EngineOptions, Generation
from canvaslab.errors import EngineError, InputError

if TYPE_CHECKING:
    import torch

    from canvaslab.engines.unified.bundle import UnifiedBundle
    from canvaslab.engines.unified.config import UnifiedConfig

DEFAULT_MODEL = "show-o"  # bundle.DEFAULT_MODEL, repeated so that this module loads without torch (a test checks)
TOKEN_PX = 16  # MAGVIT-v2 downsamples by 16: one image token per 16x16 pixels
MAX_TEXT_LEN = 128  # the reference's max_seq_length for generation prompts
MMU_PROMPT = "USER: \n{question} ASSISTANT:"  # the reference's understanding prompt for VQ-token models

_SCHEDULE = re.compile(r"^(cosine|linear|pow\d+(\.\d+)?)$")


class UnifiedOptions(EngineOptions):
    magvit: str | None = Field(
        None, description="MAGVIT-v2 folder or cached hub id [default: the model folder's magvit/, its config's "
        "vq_model_path, or showlab/magvitv2]",
    )
    tokenizer: str | None = Field(
        None, description="text tokenizer folder or cached hub id [default: the model folder's, or its llm_model_path]"
    )
    temperature: float = Field(
        1.0, ge=0, le=100, description="MaskGIT re-masking randomness, annealed to 0 over the steps "
        "(the reference's generation_temperature)",
    )
    schedule: str = Field("cosine", description="MaskGIT mask schedule: cosine, linear or powP (e.g. pow2)")
    offset: int = Field(
        0, ge=-512, le=512, description="window placement beyond the native token grid: each window advances "
        "n/2 + OFFSET tokens and overlaps n/2 - OFFSET of its neighbour (the reference's extrapolation offset)",
    )

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        if not _SCHEDULE.match(value):
            raise ValueError(f"unknown mask schedule {value!r}: choose cosine, linear or powP (e.g. pow2)")
        return value


class UnifiedEngine(Engine):
    name: ClassVar[str] = "unified"
    description: ClassVar[str] = (
        "Show-o masked-token model (--model show-o, show-o-512 or a folder): MaskGIT fill of MAGVIT tokens"
    )
    Options: ClassVar[type[EngineOptions]] = UnifiedOptions
    pad_multiple: ClassVar[int] = TOKEN_PX
    needs_context: ClassVar[bool] = False  # an all-masked canvas is text to image
    uses_prompt: ClassVar[bool] = True

    def preferred_size(self, generation: Generation, options: EngineOptions) -> int | None:
        """The native side in pixels, sqrt(num_vq_tokens) x 16, read from the model's config.json only."""
        from canvaslab.engines.unified.bundle import resolve_model_name
        from canvaslab.engines.unified.loading import read_unified_config

        return native_tokens(read_unified_config(resolve_model_name(generation.model))) * TOKEN_PX

    def describe_sampling(self, generation: Generation, options: dict[str, Any] | None = None) -> dict[str, object]:
        return {
            "Steps": unified_steps(generation),
            "Sampler": "MaskGIT",
            "CFG scale": unified_guidance(generation),
            "Model": generation.model or DEFAULT_MODEL,
        }

    def inpaint(
        self, image: np.ndarray, mask: np.ndarray, *, seed: int, options: EngineOptions, generation: Generation
    ) -> np.ndarray:
        import torch

        from canvaslab.engines.unified.tokens import MASKED

        # 1. inputs and model
        check_generation(generation)
        bundle = cached_bundle(generation, options)
        height, width = mask.shape
        canvas, hole = pad_to_window(image, mask, native_tokens(bundle.config) * TOKEN_PX)
        # 2. tokens: known codes, MASKED where any pixel of the token is masked
        codes = encode_pixels(bundle, canvas)
        codes[torch.from_numpy(token_mask(hole))] = MASKED
        # 3. MaskGIT, window by window
        filled = fill_codes(bundle, codes, **sampling_args(generation, options), generator=make_generator(bundle, seed))
        # 4. pixels, cropped back to the aligned size
        return decode_pixels(bundle, filled)[:height, :width]


# -- model loading and request checks --------------------------------------------------------------

# One bundle at a time: a released one is ~1.4B parameters.
_cache: dict[tuple, Any] = {}
_cache_lock = threading.Lock()

# Generation fields only the diffusion engine reads, with their neutral values and their flags.
_DIFFUSION_ONLY: tuple[tuple[str, object, str], ...] = (
    ("scheduler", None, "--scheduler (MaskGIT takes --opt schedule=cosine|linear|powP)"),
    ("loras", (), "--lora"),
    ("strength", 1.0, "--strength (masked tokens are always generated from scratch)"),
    ("masked_content", "original", "--masked-content"),
    ("mask_weight", 1.0, "--mask-weight"),
    ("offload", None, "--offload"),
    ("attention_slicing", False, "--attention-slicing"),
    ("vae_tiling", False, "--vae-tiling"),
    ("cache_dir", None, "--cache-dir (the unified engine reads local folders and the default HF_HOME cache)"),
)


def check_generation(generation: Generation) -> None:
    """Refuse settings this engine would otherwise ignore (never silently)."""
    for name, neutral, flag in _DIFFUSION_ONLY:
        if getattr(generation, name) != neutral:
            raise InputError(f"{flag} does not apply to the unified engine; leave it out")


def cached_bundle(generation: Generation, options: EngineOptions) -> UnifiedBundle:
    """The request's model + MAGVIT + tokenizer, loaded once and kept until another one is asked for."""
    from canvaslab.engines.diffusion.models import resolve_device, resolve_dtype
    from canvaslab.engines.unified.bundle import load_bundle, resolve_model_name
    from canvaslab.engines.unified.loading import resolve_folder

    options = _unified(options)
    device = resolve_device(generation.device)  # type: ignore[arg-type]
    dtype = resolve_dtype(generation.dtype, device)  # type: ignore[arg-type]
    folder = resolve_folder(resolve_model_name(generation.model), "unified model")
    # The folder's file times are in the key: a checkpoint rewritten in place (training) is reloaded.
    key = (str(folder.resolve()), _files_version(folder), options.magvit, options.tokenizer, str(dtype), device)
    with _cache_lock:
        if key not in _cache:
            _cache.clear()  # free the old weights before loading new ones
            bundle = load_bundle(folder, magvit=options.magvit, tokenizer=options.tokenizer, dtype=dtype, device=device)
            if bundle.downsample != TOKEN_PX:
                raise EngineError(f"the MAGVIT tokenizer downsamples by {bundle.downsample}; the unified engine needs x{TOKEN_PX}")
            _cache[key] = bundle
        return _cache[key]


def _files_version(folder: Path) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((entry.name, entry.stat().st_mtime_ns) for entry in os.scandir(folder) if entry.is_file()))


def _unified(options: EngineOptions) -> UnifiedOptions:
    if not isinstance(options, UnifiedOptions):  # a caller bypassing Engine.parse_options
        raise EngineError(f"the unified engine needs UnifiedOptions, got {type(options).__name__}")
    return options


def native_tokens(config: UnifiedConfig) -> int:
    """n, the side of the model's native token grid (16 for the 256 px release, 32 for 512 px)."""
    side = math.isqrt(config.num_vq_tokens)
    if side * side != config.num_vq_tokens:
        raise EngineError(f"num_vq_tokens {config.num_vq_tokens} is not a square grid; the unified engine needs one")
    return side


# What a request without steps or guidance gets: the shared defaults of earlier versions, kept so that
# results do not change (Show-o's published settings are guidance 1.75 with 16-18 steps: docs/unified.md).
DEFAULT_STEPS, DEFAULT_GUIDANCE = 20, 7.5


def unified_steps(generation: Generation) -> int:
    return generation.steps if generation.steps is not None else DEFAULT_STEPS


def unified_guidance(generation: Generation) -> float:
    return generation.guidance_scale if generation.guidance_scale is not None else DEFAULT_GUIDANCE


def sampling_args(generation: Generation, options: EngineOptions) -> dict[str, Any]:
    """`fill_codes` keywords from the request's generation settings and the engine options."""
    options = _unified(options)
    return {
        "prompt": generation.prompt, "negative_prompt": generation.negative_prompt,
        "guidance_scale": unified_guidance(generation), "steps": unified_steps(generation),
        "temperature": options.temperature, "schedule": options.schedule, "offset": options.offset,
    }


def make_generator(bundle: UnifiedBundle, seed: int) -> torch.Generator:
    import torch

    # torch.multinomial needs a generator on the tensors' device; on CPU the seed gives the same tokens anywhere.
    return torch.Generator(device=bundle.model.device).manual_seed(seed)


# -- pixels <-> tokens -----------------------------------------------------------------------------


def pad_to_window(image: np.ndarray, mask: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the image out to at least `side` x `side` on the right/bottom; the margin is known context."""
    height, width = mask.shape
    pad_y, pad_x = max(0, side - height), max(0, side - width)
    if not pad_y and not pad_x:
        return image, mask
    notice(f"the image ({width}x{height}) is smaller than the unified model's native {side}x{side}: it is mirrored "
           f"out to that size as context (--size {side} works at the model's own scale)")
    canvas = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)), mode="symmetric")
    return canvas, np.pad(mask, ((0, pad_y), (0, pad_x)), constant_values=False)


def token_mask(mask: np.ndarray, token: int = TOKEN_PX) -> np.ndarray:
    """(H, W) pixel mask, sides multiples of `token` -> (H/token, W/token): True where any pixel is masked."""
    height, width = mask.shape
    if height % token or width % token:
        raise EngineError(f"the mask is {width}x{height}; the unified engine needs multiples of {token}")
    return mask.reshape(height // token, token, width // token, token).any(axis=(1, 3))


def encode_pixels(bundle: UnifiedBundle, image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> code grid (H/16, W/16), on the CPU."""
    import torch

    pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
    return bundle.image_codes(pixels)[0].cpu()


def decode_pixels(bundle: UnifiedBundle, codes: torch.Tensor) -> np.ndarray:
    """Code grid (h, w) -> (16h)x(16w)x3 uint8."""
    pixels = bundle.decode_codes(codes[None].long())[0].float().cpu()
    return ((pixels.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


# -- MaskGIT window by window ----------------------------------------------------------------------


def window_stride(n: int, offset: int) -> int:
    """How far consecutive windows of n tokens advance: n/2 + offset, leaving n/2 - offset tokens of overlap."""
    half = n // 2
    if not 1 - half <= offset <= half - 1:
        raise InputError(
            f"offset {offset} is outside [{1 - half}, {half - 1}] for the model's {n}x{n}-token window: a window "
            f"advances n/2 + offset tokens and must keep at least one token of overlap"
        )
    return half + offset


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start positions of `window`-long windows along an axis of `length`, `stride` apart, the last flush with the end."""
    last = length - window
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def plan_windows(todo: np.ndarray, n: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the n x n windows that fill `todo` (h, w), in the order they run.

    Greedy and deterministic: the window with the fewest unknown tokens (the most context) that still
    has any goes next (ties: raster order); what it fills counts as known for the rest.
    """
    todo = todo.copy()
    height, width = todo.shape
    windows = [(y, x) for y in window_starts(height, n, stride) for x in window_starts(width, n, stride)]
    order = []
    while todo.any():
        counts = [(int(todo[y : y + n, x : x + n].sum()), (y, x)) for y, x in windows]
        _, (y, x) = min((count, corner) for count, corner in counts if count)
        order.append((y, x))
        todo[y : y + n, x : x + n] = False
    return order


def fill_codes(
    bundle: UnifiedBundle,
    codes: torch.Tensor,
    *,
    prompt: str = "",
    negative_prompt: str = "",
    guidance_scale: float = 0.0,
    steps: int = 18,
    temperature: float = 1.0,
    schedule: str = "cosine",
    offset: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill the `MASKED` positions of one code grid (h, w), both at least the native side n.

    Known codes never change. One window is exactly the reference's MaskGIT call for that n x n
    grid; bigger grids run `plan_windows`' windows one after another.
    """
    from canvaslab.engines.unified.tokens import MASKED

    n = native_tokens(bundle.config)
    height, width = codes.shape
    if height < n or width < n:
        raise EngineError(f"a {width}x{height} token grid is smaller than the model's {n}x{n} window")
    stride = window_stride(n, offset)
    prompt_ids = bundle.text_ids([prompt])[0]
    negative_ids = bundle.text_ids([negative_prompt])[0] if negative_prompt else []
    codes = codes.clone()
    for y, x in plan_windows((codes == MASKED).numpy(), n, stride):
        window = codes[y : y + n, x : x + n]
        codes[y : y + n, x : x + n] = decode_window(
            bundle, window, prompt_ids, negative_ids, guidance_scale=guidance_scale, steps=steps,
            temperature=temperature, schedule=schedule, generator=generator,
        )
    return codes


def decode_window(
    bundle: UnifiedBundle,
    window: torch.Tensor,
    prompt_ids: Sequence[int],
    negative_ids: Sequence[int],
    *,
    guidance_scale: float,
    steps: int,
    temperature: float,
    schedule: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One n x n window through MaskGIT: the reference's t2i sequences, guidance row with the negative text."""
    import torch

    from canvaslab.engines.unified.attention import t2i_attention_mask
    from canvaslab.engines.unified.prompts import t2i_sequences
    from canvaslab.engines.unified.sampling import maskgit_decode, mask_schedule

    mask_schedule(schedule)  # an unknown name fails before any work
    model, layout = bundle.model, bundle.layout
    image_ids = layout.codes_to_ids(window.reshape(1, -1)).to(model.device)
    input_ids = t2i_sequences(layout, [prompt_ids], image_ids, max_text_len=MAX_TEXT_LEN)
    uncond_ids = None
    if guidance_scale > 0:
        uncond_ids = t2i_sequences(layout, [negative_ids], image_ids, max_text_len=MAX_TEXT_LEN)
    rows = input_ids if uncond_ids is None else torch.cat([input_ids, uncond_ids])
    result = maskgit_decode(
        model, input_ids, attention_mask=t2i_attention_mask(rows, layout, dtype=model.dtype),
        uncond_input_ids=uncond_ids, text_len=MAX_TEXT_LEN + 1, guidance_scale=guidance_scale, steps=steps,
        temperature=temperature, schedule=schedule, generator=generator,
        callback=(lambda step, codes: report_progress(step + 1, steps)) if listening() else None,
    )
    return result.reshape(window.shape).cpu()


# -- text to image ---------------------------------------------------------------------------------


def generate_image(
    generation: Generation, options: EngineOptions, *, width: int, height: int, seed: int
) -> np.ndarray:
    """A `height` x `width` x 3 uint8 image painted from `generation.prompt` (sides multiples of 16).

    Larger than the native size: windows as for inpainting (a panorama grows from its first window).
    Smaller: a native-size picture is painted and its centre cut out.
    """
    import torch

    from canvaslab.engines.unified.tokens import MASKED

    if width % TOKEN_PX or height % TOKEN_PX:
        raise InputError(f"the unified engine paints in {TOKEN_PX}-pixel tokens: {width}x{height} must be multiples of {TOKEN_PX}")
    check_generation(generation)
    bundle = cached_bundle(generation, options)
    n = native_tokens(bundle.config)
    rows, columns = height // TOKEN_PX, width // TOKEN_PX
    codes = torch.full((max(rows, n), max(columns, n)), MASKED, dtype=torch.long)
    filled = fill_codes(bundle, codes, **sampling_args(generation, options), generator=make_generator(bundle, seed))
    pixels = decode_pixels(bundle, filled)
    top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
    return np.ascontiguousarray(pixels[top : top + height, left : left + width])


# -- understanding ---------------------------------------------------------------------------------


def square_input(image: np.ndarray, side: int) -> np.ndarray:
    """The reference's `image_transform`: short side resized to `side` (bilinear), then a centre crop."""
    from PIL import Image

    height, width = image.shape[:2]
    short, long = min(width, height), max(width, height)
    other = int(side * long / short)  # torchvision's Resize(int) rounds the long side down
    size = (side, other) if width <= height else (other, side)
    resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    top = int(round((resized.shape[0] - side) / 2.0))
    left = int(round((resized.shape[1] - side) / 2.0))
    return np.ascontiguousarray(resized[top : top + side, left : left + side])


def answer_questions(
    images: Sequence[np.ndarray],
    questions: Sequence[str],
    generation: Generation,
    options: EngineOptions,
    *,
    sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    max_new_tokens: int = 100,
    seed: int = 0,
    use_cache: bool = True,
    batch_size: int = 8,
) -> list[list[str]]:
    """Answers[image][question]: every question asked about every image (HxWx3 uint8 each).

    Image x question rows are decoded `batch_size` at a time; greedy rows give the same answer in any
    batch (padding is invisible to them). Sampling draws from one generator in row order.
    """
    import torch

    from canvaslab.engines.unified.prompts import mmu_sequences
    from canvaslab.engines.unified.sampling import generate_text

    if not images or not questions:
        raise InputError("understanding needs at least one image and one question")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1; got {batch_size}")
    check_generation(generation)
    bundle = cached_bundle(generation, options)
    if bundle.config.w_clip_vit:
        raise InputError(f"model {generation.model or DEFAULT_MODEL} is Show-o's CLIP-ViT variant, whose understanding "
                         "needs a CLIP vision tower canvaslab does not run: use a VQ-token model such as show-o")
    side = native_tokens(bundle.config) * TOKEN_PX
    codes = [encode_pixels(bundle, square_input(image, side)).reshape(-1) for image in images]
    question_ids = bundle.text_ids([MMU_PROMPT.format(question=question) for question in questions])
    rows = [(i, q) for i in range(len(images)) for q in range(len(questions))]
    generator = make_generator(bundle, seed) if sample else None
    answers: list[list[str]] = [["" for _ in questions] for _ in images]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        image_ids = bundle.layout.codes_to_ids(torch.stack([codes[i] for i, _ in chunk]))
        input_ids = mmu_sequences(bundle.layout, image_ids, [question_ids[q] for _, q in chunk])
        tokens = generate_text(
            bundle.model, input_ids, max_new_tokens=max_new_tokens, sample=sample,
            temperature=1.0 if temperature is None else temperature, top_k=top_k, generator=generator,
            use_cache=use_cache,
        )
        for (i, q), ids in zip(chunk, tokens):
            answers[i][q] = bundle.decode_text(ids).strip()
    return answers
