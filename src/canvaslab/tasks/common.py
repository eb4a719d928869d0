"""Steps shared by the inpaint and outpaint tasks: inputs, seeds, running an engine, compositing, recipes."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from canvaslab import __version__
from canvaslab.core.color import match_colors
from canvaslab.core.composite import composite
from canvaslab.core.geometry import AlignMode, align, align_levels, resize_levels, resize_mask, resize_rgb, restore
from canvaslab.core.image import DEFAULT_MAX_PIXELS, LoadedImage, load_image
from canvaslab.core.metadata import format_parameters
from canvaslab.core.notices import notice
from canvaslab.engines import Engine, EngineOptions, get_engine
from canvaslab.errors import EngineError, InputError
from canvaslab.tasks.conditioning import Conditioning
from canvaslab.tasks.requests import ColorMatch, TaskRequest, Tiling

ImageInput = Union[str, os.PathLike, bytes, np.ndarray, Image.Image, LoadedImage]


def open_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    return source if isinstance(source, LoadedImage) else load_image(source, max_pixels=max_pixels)


LIKELY_INVERTED = 0.75  # share of the picture a mask covers above which it is more often inverted than meant


def polarity_hint(hole: np.ndarray, mode: str, what: str = "the image") -> None:
    """A notice when a mask read from a file covers most of the picture: usually black = fill read as white
    = fill (or the reverse). It only asks; large masks are sometimes meant."""
    share = float(np.asarray(hole, bool).mean()) if hole.size else 0.0
    if share > LIKELY_INVERTED and mode in ("white", "black"):
        other = "black" if mode == "white" else "white"
        notice(f"the mask covers {100 * share:.0f} % of {what}: if the part to fill is {other} in it, add "
               f"--mask-mode {other} ({mode} = fill was used)")


def resolve_seed(seed: int | None) -> int:
    """The seed to use: the user's, or a fresh random one that the recipe then records."""
    return int(seed) if seed is not None else secrets.randbelow(2**32)


def step_seed(seed: int, index: int) -> int:
    """Seed for the index-th sub-step (outpaint steps, grid rows), wrapping inside 32 bits."""
    return (seed + index) % 2**32


def engine_for(request: TaskRequest) -> tuple[Engine, EngineOptions]:
    """The request's engine and its validated options (a prompt it cannot use is pointed out)."""
    engine = get_engine(request.engine)
    options = engine.parse_options(request.options)
    if (request.prompt or request.negative_prompt) and not engine.uses_prompt:
        notice(f"engine {engine.name!r} does not read prompts: the prompt is only recorded in the recipe")
    return engine, options


def working_size(size: tuple[int, int], long_side: int | None, multiple: int) -> tuple[int, int] | None:
    """(width, height) with the long side scaled to `long_side` and both sides rounded to `multiple`."""
    if long_side is None:
        return None
    width, height = size
    scale = long_side / max(width, height)
    target = tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))
    return None if target == (width, height) else target  # type: ignore[return-value]


def run_engine(
    engine: Engine,
    rgb: np.ndarray,
    mask: np.ndarray,
    request: TaskRequest,
    options: EngineOptions,
    seed: int,
    long_side: int | None = None,
    levels: np.ndarray | None = None,
    conditioning: Conditioning | None = None,
) -> np.ndarray:
    """Scale to the working size (if any), align to the engine's multiple, fill, and restore the exact size.

    `levels` (soft inpainting: HxW float in [0, 1], `mask` is `levels > 0`) travel with the mask through
    the same geometry and reach the engine as `Generation.strength_map`; `conditioning` (control images
    at `rgb`'s size, IP-Adapter images) travels with the image and reaches it as `Generation.control`.
    """
    generation = request.generation()
    multiple = request.multiple or engine.size_multiple(generation, options)
    work = working_size((rgb.shape[1], rgb.shape[0]), long_side, multiple)
    if work is not None:
        # Engines such as diffusion models work best at their native resolution: scale there and back.
        small = run_engine(engine, resize_rgb(rgb, work), resize_mask(mask, work), request, options, seed,
                           levels=None if levels is None else resize_levels(levels, work),
                           conditioning=None if conditioning is None else conditioning.resized(work))
        return resize_rgb(small, (rgb.shape[1], rgb.shape[0]))
    aligned_rgb, aligned_mask, info = align(rgb, mask, multiple, request.align)
    if conditioning is not None:
        generation = conditioning.aligned(info).given(generation)
    if levels is not None:
        strength_map = align_levels(levels, info)
        aligned_mask = strength_map > 0  # the mask and its levels sampled at the same pixels, whatever the geometry
        generation = dataclasses.replace(generation, strength_map=strength_map)
    if info.aligned_size != info.original_size and info.mode == AlignMode.pad and request.tiling != Tiling.none:
        width, height = info.original_size
        raise InputError(
            f"--tiling wraps the picture around its edges, but {width}x{height} would be padded to a multiple of "
            f"{multiple} first and the padding would wrap instead: use --align resize, or a size that is a multiple of {multiple}"
        )
    engine.check_mask(aligned_mask)
    out = engine.inpaint(aligned_rgb, aligned_mask, seed=seed, options=options, generation=generation)
    if out.shape != aligned_rgb.shape or out.dtype != np.uint8:
        raise EngineError(f"engine {engine.name!r} returned {out.shape} {out.dtype}, expected {aligned_rgb.shape} uint8")
    return restore(out, info)


def finish(original: np.ndarray, generated: np.ndarray, mask: np.ndarray, request: TaskRequest,
           levels: np.ndarray | None = None) -> np.ndarray:
    """Optional colour matching, then the composite that keeps unmasked pixels bit-identical (soft
    inpainting: blended by `levels`, so level-0 pixels are the unmasked ones)."""
    if request.color_match != ColorMatch.none and mask.any() and not mask.all():
        generated = match_colors(generated, mask, method=request.color_match.value)
    return composite(original, generated, mask, request.feather, levels)


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per file version: seed rows and grids record the same input many times."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe_input(source: Any, loaded: LoadedImage | None = None) -> dict[str, Any]:
    """How the recipe remembers an input: an absolute path (replay reopens it) and a content hash."""
    entry: dict[str, Any] = {"path": None}
    if isinstance(source, LoadedImage) and Path(source.source).is_file():
        source = source.source  # decoded once by the caller; the file is still what replay reopens
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).resolve()
        entry["path"] = str(path)
        try:
            stat = path.stat()
            entry["sha256"] = _file_digest(str(path), stat.st_size, stat.st_mtime_ns)
        except OSError:
            pass
    elif loaded is not None:
        entry["sha256"] = hashlib.sha256(np.ascontiguousarray(loaded.rgb).tobytes()).hexdigest()
    return entry


def make_recipe(
    task: str, request: TaskRequest, seed: int, size: tuple[int, int], inputs: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """The JSON recipe (complete request, seed used, inputs) and the A1111 `parameters` text."""
    body = request.model_dump(mode="json")
    body["seed"] = seed
    recipe = {"canvaslab": __version__, "task": task, "request": body, "inputs": inputs, "size": list(size)}
    # A1111 puts Steps/Sampler/CFG first; weight-free engines have none of those.
    sampling = get_engine(request.engine).describe_sampling(request.generation(), request.options)
    text = format_parameters(request.prompt, request.negative_prompt, {**sampling, **request.a1111_settings(size, seed)})
    return recipe, text
