"""Random masks for training inpainting models.

Every generator has the signature ``(rng, height, width, **params) -> HxW bool`` (True = to inpaint)
and takes all its randomness from `rng`, so a generator state gives the same mask every time:

- `boxes`: rectangles and rotated ellipses, sides a fraction of the image's sides.
- `glide_boxes`: GLID-3's rectangles: 1-4 of them, each at most half the image, union at most half.
- `blurred_noise`: GLID-3's thresholded mask, with blurred white noise standing in for the other
  image's latent that GLID-3 thresholds; coverage drawn from 5-95 % like its quantile.
- `strokes`: LaMa's irregular brush strokes (polylines of random angle, length and width), with the
  `thin` / `medium` / `thick` presets of LaMa's 256-px configs, scaled to the image.
- `cloud`: fBm (octaves of smoothly interpolated noise) thresholded at a target coverage.
- `edge_band`: outpainting: a band along 1-4 random sides.
- `everything`: all True, for unconditional (classifier-free guidance) training.

Guarantee: apart from `everything`, a mask is never empty and never the whole image. A degenerate
draw is *resampled* from the same `rng` (so still deterministic); after `MAX_DRAWS` degenerate draws,
which only happens on images of a few pixels, one random pixel is flipped instead.

`MaskMixture` picks a generator by weight for each sample (and returns `everything` with probability
`p_everything`); `MaskMixture.from_config` reads the YAML section of a training config.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from canvaslab.errors import InputError

MAX_DRAWS = 32
Range = tuple[float, float]


class MaskGenerator(Protocol):
    def __call__(self, rng: np.random.Generator, height: int, width: int, **params: Any) -> np.ndarray: ...


# --- parameter checks -------------------------------------------------------------------------------


def _check_size(height: int, width: int) -> None:
    if int(height) != height or int(width) != width or height < 1 or width < 1 or height * width < 2:
        raise InputError(f"mask size must be whole numbers with at least 2 pixels, got {height}x{width} (HxW)")


def _check_range(name: str, value: Any, low: float, high: float, *, integer: bool = False) -> tuple[Any, Any]:
    """`value` as a (min, max) pair inside [low, high]; a single number means (value, value)."""
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    kind = "whole numbers" if integer else "numbers"
    if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
        raise InputError(f"{name} must be a number or a [min, max] pair of {kind}, got {value!r}")
    if integer and any(int(v) != v for v in pair):
        raise InputError(f"{name} must be whole numbers, got {value!r}")
    if not low <= pair[0] <= pair[1] <= high:
        raise InputError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return (int(pair[0]), int(pair[1])) if integer else (float(pair[0]), float(pair[1]))


def _uniform_int(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


# --- the never-empty, never-full guarantee -------------------------------------------------------


def _flip_one_pixel(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Last resort for tiny images: turn one pixel on (empty mask) or off (full mask)."""
    y, x = int(rng.integers(mask.shape[0])), int(rng.integers(mask.shape[1]))
    mask = mask.copy()
    mask[y, x] = not mask.any()
    return mask


def partial_mask(draw: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Wrap a drawing function so its masks are never empty and never full (see module docstring)."""

    @functools.wraps(draw)
    def generator(rng: np.random.Generator, height: int, width: int, **params: Any) -> np.ndarray:
        _check_size(height, width)
        for _ in range(MAX_DRAWS):
            mask = draw(rng, int(height), int(width), **params)
            if mask.any() and not mask.all():
                return mask
        return _flip_one_pixel(rng, mask)

    return generator


# --- generators -----------------------------------------------------------------------------------


def _ellipse(
    height: int, width: int, center: tuple[float, float], axes: tuple[float, float], angle: float
) -> np.ndarray:
    """Filled rotated ellipse; done in numpy so sub-pixel sizes still give at least the centre pixel.
    Only the window around it (a circle of the longer semi-axis) is evaluated, which keeps big images cheap."""
    inside = np.zeros((height, width), bool)
    reach = max(axes) + 1
    top, bottom = max(0, int(center[0] - reach)), min(height, int(center[0] + reach) + 1)
    left, right = max(0, int(center[1] - reach)), min(width, int(center[1] + reach) + 1)
    ys, xs = np.mgrid[top:bottom, left:right]
    dy, dx = ys + 0.5 - center[0], xs + 0.5 - center[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = (dx * cos + dy * sin) / axes[1], (-dx * sin + dy * cos) / axes[0]
    inside[top:bottom, left:right] = u * u + v * v <= 1.0
    inside[min(int(center[0]), height - 1), min(int(center[1]), width - 1)] = True
    return inside


@partial_mask
def boxes(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    count: Range = (1, 4),
    size: Range = (0.1, 0.5),
    ellipse_prob: float = 0.5,
) -> np.ndarray:
    """`count` rectangles or ellipses (rotated), each side `size` times the image's side."""
    count = _check_range("count", count, 1, 100, integer=True)
    size = _check_range("size", size, 0.0, 1.0)
    _check_range("ellipse_prob", ellipse_prob, 0.0, 1.0)
    mask = np.zeros((height, width), bool)
    for _ in range(_uniform_int(rng, count)):
        box_h = max(1, round(rng.uniform(*size) * height))
        box_w = max(1, round(rng.uniform(*size) * width))
        top, left = int(rng.integers(height - box_h + 1)), int(rng.integers(width - box_w + 1))
        if rng.random() < ellipse_prob:
            centre = (top + box_h / 2, left + box_w / 2)
            mask |= _ellipse(height, width, centre, (box_h / 2, box_w / 2), rng.uniform(0, math.pi))
        else:
            mask[top : top + box_h, left : left + box_w] = True
    return mask


def _glide_rectangle(rng: np.random.Generator, height: int, width: int, max_area: float) -> tuple[int, int]:
    """GLID-3's rectangle: sides uniform in [1, side]; if too big, a coin decides which side shrinks."""
    box_h, box_w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
    if box_h * box_w > max_area:
        if rng.random() < 0.5:
            box_w = max(1, int(max_area // box_h))
        else:
            box_h = max(1, int(max_area // box_w))
    return box_h, box_w


@partial_mask
def glide_boxes(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    count: Range = (1, 4),
    max_coverage: float = 0.5,
) -> np.ndarray:
    """GLID-3's rectangles: each at most `max_coverage` of the image; one that would push the union
    over `max_coverage` is left out (GLID-3 only capped each rectangle; we cap the union too)."""
    count = _check_range("count", count, 1, 100, integer=True)
    _check_range("max_coverage", max_coverage, 0.0, 1.0)
    mask = np.zeros((height, width), bool)
    limit = max_coverage * height * width
    for _ in range(_uniform_int(rng, count)):
        box_h, box_w = _glide_rectangle(rng, height, width, limit)
        top, left = int(rng.integers(height - box_h + 1)), int(rng.integers(width - box_w + 1))
        candidate = mask.copy()
        candidate[top : top + box_h, left : left + box_w] = True
        if candidate.sum() <= limit:
            mask = candidate
    return mask


def _threshold_to_coverage(field_: np.ndarray, coverage: float) -> np.ndarray:
    """True on the `coverage` fraction of pixels where `field_` is highest."""
    return field_ > np.quantile(field_, 1.0 - coverage)


@partial_mask
def blurred_noise(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    coverage: Range = (0.05, 0.95),
    blur: Range = (0.02, 0.08),
) -> np.ndarray:
    """White noise blurred with a Gaussian of sigma `blur` x the image's diagonal-ish size
    (sqrt(H*W)), thresholded so `coverage` (drawn per mask) of the pixels are True."""
    coverage = _check_range("coverage", coverage, 0.0, 1.0)
    blur = _check_range("blur", blur, 0.0, 1.0)
    noise = rng.standard_normal((height, width)).astype(np.float32)
    sigma = max(0.5, rng.uniform(*blur) * math.sqrt(height * width))
    return _threshold_to_coverage(cv2.GaussianBlur(noise, (0, 0), sigma), rng.uniform(*coverage))


def _fbm(rng: np.random.Generator, height: int, width: int, cells: int, octaves: int, persistence: float) -> np.ndarray:
    """Sum of `octaves` layers of bicubically upsampled noise, each twice as fine and `persistence`
    times as strong as the last; the coarsest has `cells` cells along the longer side."""
    total = np.zeros((height, width), np.float32)
    longest = max(height, width)
    for octave in range(octaves):
        n = cells * 2**octave
        grid_h, grid_w = max(2, round(n * height / longest) + 1), max(2, round(n * width / longest) + 1)
        layer = rng.standard_normal((grid_h, grid_w)).astype(np.float32)
        total += persistence**octave * cv2.resize(layer, (width, height), interpolation=cv2.INTER_CUBIC)
    return total


@partial_mask
def cloud(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    coverage: Range = (0.1, 0.6),
    cells: int = 3,
    octaves: int = 5,
    persistence: float = 0.6,
) -> np.ndarray:
    """fBm noise thresholded so `coverage` (drawn per mask) of the pixels are True: large blobs with
    ragged, multi-scale edges, unlike `blurred_noise`'s smooth ones."""
    coverage = _check_range("coverage", coverage, 0.0, 1.0)
    _check_range("cells", cells, 1, 64, integer=True)
    _check_range("octaves", octaves, 1, 10, integer=True)
    _check_range("persistence", persistence, 0.0, 1.0)
    noise = _fbm(rng, height, width, int(cells), int(octaves), float(persistence))
    return _threshold_to_coverage(noise, rng.uniform(*coverage))


# LaMa's random_{thin,medium,thick}_256 irregular-mask settings, as inclusive ranges in pixels of a
# 256x256 image (LaMa draws width 5 + randint(max_width), length 10 + randint(max_len)). Their
# box part is left to the `boxes` generator.
STROKE_PRESETS: dict[str, dict[str, tuple[int, int]]] = {
    "thin": {"count": (4, 50), "width_px": (5, 14), "length_px": (10, 49), "vertices": (1, 5)},
    "medium": {"count": (4, 5), "width_px": (5, 54), "length_px": (10, 109), "vertices": (1, 5)},
    "thick": {"count": (1, 5), "width_px": (5, 104), "length_px": (10, 209), "vertices": (1, 5)},
}
STROKE_REFERENCE = 256  # the presets' image size; sizes scale with sqrt(H*W) / 256


def _draw_stroke(
    rng: np.random.Generator, canvas: np.ndarray, params: Mapping[str, tuple[float, float]], scale: float,
    max_turn: float,
) -> None:
    """One polyline from a random point: each segment turns by up to `max_turn` radians and has its
    own length and brush width (like LaMa); ends are clipped to the image."""
    height, width = canvas.shape
    point = np.array([rng.uniform(0, width), rng.uniform(0, height)])
    heading = rng.uniform(0, 2 * math.pi)
    for _ in range(_uniform_int(rng, params["vertices"])):
        heading += rng.uniform(-max_turn, max_turn)
        length = rng.uniform(*params["length_px"]) * scale
        end = np.clip(point + length * np.array([math.cos(heading), math.sin(heading)]), 0, [width - 1, height - 1])
        thickness = max(1, round(rng.uniform(*params["width_px"]) * scale))
        cv2.line(canvas, tuple(int(v) for v in point), tuple(int(v) for v in end), 1, thickness)
        point = end


@partial_mask
def strokes(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    preset: str = "medium",
    count: Range | None = None,
    width_px: Range | None = None,
    length_px: Range | None = None,
    vertices: Range | None = None,
    max_turn: float = 2.0,
) -> np.ndarray:
    """LaMa-style brush strokes. `preset` gives the defaults; `count`, `vertices` (segments per
    stroke), `width_px` and `length_px` (pixels at 256x256, scaled by sqrt(H*W)/256) override them."""
    if preset not in STROKE_PRESETS:
        raise InputError(f"preset must be one of {', '.join(STROKE_PRESETS)}, got {preset!r}")
    chosen = dict(STROKE_PRESETS[preset])
    overrides = {"count": count, "width_px": width_px, "length_px": length_px, "vertices": vertices}
    for key, value in overrides.items():
        if value is not None:
            chosen[key] = _check_range(key, value, 0 if key == "length_px" else 1, 10_000)
    _check_range("max_turn", max_turn, 0.0, math.pi)
    chosen["count"] = tuple(int(v) for v in chosen["count"])
    chosen["vertices"] = tuple(int(v) for v in chosen["vertices"])
    canvas = np.zeros((height, width), np.uint8)
    scale = math.sqrt(height * width) / STROKE_REFERENCE
    for _ in range(_uniform_int(rng, chosen["count"])):
        _draw_stroke(rng, canvas, chosen, scale, max_turn)
        if canvas.all():  # will be redrawn anyway; saves most of the time on tiny images
            break
    return canvas.astype(bool)


SIDES = ("left", "right", "top", "bottom")


@partial_mask
def edge_band(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    sides: Range = (1, 4),
    band: Range = (0.1, 0.35),
) -> np.ndarray:
    """Outpainting: bands along `sides` random distinct sides, each `band` times the image's size
    across it (a left band is `band` x width wide) and at least 1 pixel. The 0.35 cap keeps at
    least 30 % of each axis known even with all four sides (an outpaint of up to ~3x)."""
    sides = _check_range("sides", sides, 1, 4, integer=True)
    band = _check_range("band", band, 0.0, 1.0)
    mask = np.zeros((height, width), bool)
    for side in rng.permutation(len(SIDES))[: _uniform_int(rng, sides)]:
        across = width if SIDES[side] in ("left", "right") else height
        depth = max(1, round(rng.uniform(*band) * across))
        if SIDES[side] == "left":
            mask[:, :depth] = True
        elif SIDES[side] == "right":
            mask[:, width - depth :] = True
        elif SIDES[side] == "top":
            mask[:depth, :] = True
        else:
            mask[height - depth :, :] = True
    return mask


def everything(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """All True: the model sees no pixels, which trains its unconditional mode."""
    _check_size(height, width)
    return np.ones((height, width), bool)


GENERATORS: dict[str, MaskGenerator] = {
    "boxes": boxes,
    "glide_boxes": glide_boxes,
    "blurred_noise": blurred_noise,
    "strokes-thin": functools.partial(strokes, preset="thin"),
    "strokes-medium": functools.partial(strokes, preset="medium"),
    "strokes-thick": functools.partial(strokes, preset="thick"),
    "cloud": cloud,
    "edge_band": edge_band,
    "everything": everything,
}


# --- the mixture -----------------------------------------------------------------------------------


def _parameter_names(generator: MaskGenerator) -> list[str]:
    """Keyword parameters a config may set (those a preset already fixes excluded)."""
    fixed = generator.keywords if isinstance(generator, functools.partial) else {}
    signature = inspect.signature(generator)
    return [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name not in fixed]


def _check_params(name: str, params: Mapping[str, Any]) -> None:
    """Reject unknown parameter names, then draw one small mask so bad values fail at load time."""
    allowed = _parameter_names(GENERATORS[name])
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InputError(f"mask generator {name!r} has no parameter {unknown[0]!r}; allowed: {', '.join(allowed)}")
    try:
        GENERATORS[name](np.random.default_rng(0), 32, 32, **params)
    except InputError as error:
        raise InputError(f"masks.{name}: {error}") from None


@dataclass(frozen=True)
class MaskMixture:
    """Draws each mask from a generator chosen by weight, or `everything` with probability `p_everything`.

    weights: generator name -> relative weight (>= 0, not all zero); names are the keys of
        `GENERATORS` except `everything`, which `p_everything` covers.
    p_everything: probability in [0, 1] of an all-True mask (unconditional training).
    params: generator name -> keyword parameters for it (e.g. ``{"boxes": {"count": [1, 2]}}``).
    """

    weights: Mapping[str, float]
    p_everything: float = 0.0
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        allowed = [name for name in GENERATORS if name != "everything"]
        for name, weight in self.weights.items():
            if name == "everything":
                raise InputError("mask generator 'everything' is set with p_everything, not a weight")
            if name not in allowed:
                raise InputError(f"unknown mask generator {name!r}; allowed: {', '.join(allowed)}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
                raise InputError(f"mask weight {name!r} must be a finite number >= 0, got {weight!r}")
        if not any(self.weights.values()):
            raise InputError(f"mask weights must not all be zero, got {dict(self.weights)}")
        p = self.p_everything
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise InputError(f"p_everything must be a number in [0, 1], got {p!r}")
        for name, params in self.params.items():
            if name not in self.weights:
                raise InputError(f"mask parameters given for {name!r}, which has no weight")
            _check_params(name, params)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MaskMixture:
        """Read a config section: ``name: weight`` or ``name: {weight: w, <param>: value}``, plus
        an optional ``p_everything``."""
        weights: dict[str, float] = {}
        params: dict[str, dict[str, Any]] = {}
        for name, value in config.items():
            if name == "p_everything":
                continue
            if isinstance(value, Mapping):
                if "weight" not in value:
                    raise InputError(f"mask generator {name!r} needs a 'weight' next to its parameters")
                weights[name] = value["weight"]
                params[name] = {key: v for key, v in value.items() if key != "weight"}
            else:
                weights[name] = value
        return cls(weights=weights, p_everything=config.get("p_everything", 0.0), params=params)

    @property
    def probabilities(self) -> dict[str, float]:
        """Chance of each generator given the mask is not `everything`."""
        total = float(sum(self.weights.values()))
        return {name: weight / total for name, weight in self.weights.items()}

    def choose(self, rng: np.random.Generator) -> str:
        """The generator name for the next mask (``"everything"`` with probability `p_everything`).

        Always takes two draws from `rng`, so the stream does not depend on the outcome.
        """
        unconditional = rng.random() < self.p_everything
        names, probs = zip(*self.probabilities.items())
        picked = names[int(rng.choice(len(names), p=probs))]
        return "everything" if unconditional else picked

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """One HxW bool mask (True = to inpaint)."""
        name = self.choose(rng)
        return GENERATORS[name](rng, height, width, **self.params.get(name, {}))


# --- measuring -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoverageStats:
    """Fraction of True pixels over `n` masks."""

    mean: float
    minimum: float
    maximum: float
    fractions: np.ndarray


def coverage_stats(
    generator: str | MaskGenerator, n: int, size: int | tuple[int, int], seed: int, **params: Any
) -> CoverageStats:
    """Draw `n` masks of `size` (side, or (height, width)) from one seeded rng and summarise coverage."""
    draw = GENERATORS[generator] if isinstance(generator, str) else generator
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    fractions = np.array([draw(rng, height, width, **params).mean() for _ in range(n)])
    return CoverageStats(float(fractions.mean()), float(fractions.min()), float(fractions.max()), fractions)
