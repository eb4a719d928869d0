"""Canvas expansion for outpainting.

An outpaint request says how far to extend each side (pixels, or a fraction of the current size in
chosen directions) and in how many steps. Each step makes a bigger canvas, puts the current image
in it, pre-fills the new area (edge / mirror / blur / noise) and returns the mask of what the engine
must generate: the new area plus an overlap band of the old image along each extended side, so the
engine regenerates the seam instead of butting new content against an old edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from PIL import Image, ImageFilter

from canvaslab.core.color import match_colors
from canvaslab.errors import InputError

SIDES = ("left", "right", "top", "bottom")


class InitialFill(str, Enum):
    """How the new area is pre-filled before the engine sees it."""

    edge = "edge"
    mirror = "mirror"
    blur = "blur"
    noise = "noise"
    matched_noise = "matched-noise"
    patchmatch = "patchmatch"  # done by the outpaint task: core knows no engines
    engine = "engine"


@dataclass(frozen=True)
class Expansion:
    """Pixels to add on each side."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def __post_init__(self) -> None:
        for side in SIDES:
            if getattr(self, side) < 0:
                raise InputError(f"--{side} must be >= 0 pixels, got {getattr(self, side)}")

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, side) for side in SIDES)

    def new_size(self, size: tuple[int, int]) -> tuple[int, int]:
        width, height = size
        return width + self.left + self.right, height + self.top + self.bottom


def parse_directions(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'left,right' or ['left', 'up'] -> ('left', 'right'); 'up'/'down' are accepted for top/bottom."""
    items = text.split(",") if isinstance(text, str) else list(text)
    aliases = {"up": "top", "down": "bottom"}
    out: list[str] = []
    for raw in items:
        name = aliases.get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in SIDES:
            raise InputError(f"unknown direction {raw.strip()!r}: use left, right, top (up) or bottom (down)")
        if name not in out:
            out.append(name)
    return tuple(out)


def plan_expansion(
    size: tuple[int, int],
    *,
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    expand: float | None = None,
    directions: tuple[str, ...] = (),
) -> Expansion:
    """Turn the user's pixels-or-fraction request into pixels per side, rejecting mixtures."""
    pixels = Expansion(left, right, top, bottom)
    if expand is None:
        if directions:
            raise InputError("--direction needs --expand FRACTION (or give --left/--right/--top/--bottom in pixels)")
        if pixels.is_empty:
            raise InputError("nothing to outpaint: give --left/--right/--top/--bottom PX or --expand FRACTION")
        return pixels
    if not pixels.is_empty:
        raise InputError("give either --expand FRACTION or --left/--right/--top/--bottom PX, not both")
    if not 0 < expand <= 8:
        raise InputError(f"--expand must be a fraction in (0, 8], got {expand}")
    if not directions:
        raise InputError("--expand needs --direction (e.g. --direction left,right)")
    width, height = size
    amount = {
        "left": round(width * expand),
        "right": round(width * expand),
        "top": round(height * expand),
        "bottom": round(height * expand),
    }
    return Expansion(**{side: amount[side] if side in directions else 0 for side in SIDES})


def parse_sequence(items: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Sides per step, in order: 'left,left,right', the reference's 'left *** up', or 'left+up' for two at once.

    Returns one entry per step, its sides joined by '+' in canonical names: ('left', 'left', 'left+top').
    """
    text = items if isinstance(items, str) else ",".join(str(item) for item in items)
    entries = [entry for entry in text.replace("***", ",").split(",") if entry.strip()]
    return tuple("+".join(parse_directions(entry.split("+"))) for entry in entries)


def plan_sequence(size: tuple[int, int], expand: float, sequence: tuple[str, ...]) -> list[Expansion]:
    """One expansion per `parse_sequence` entry, each adding `expand` of the input's width (left/right) or
    height (top/bottom) on its sides, so repeated steps on one side add equal strips (as in the reference)."""
    if not 0 < expand <= 8:
        raise InputError(f"--expand must be a fraction in (0, 8], got {expand}")
    width, height = size
    amount = {"left": round(width * expand), "right": round(width * expand),
              "top": round(height * expand), "bottom": round(height * expand)}
    steps = [Expansion(**{side: amount[side] for side in entry.split("+")}) for entry in sequence]
    if not steps or any(step.is_empty for step in steps):
        raise InputError(f"--sequence {' '.join(sequence) or '(empty)'} with --expand {expand} adds no pixels in some step")
    return steps


def total_expansion(steps: list[Expansion]) -> Expansion:
    """The sum of several expansions: what they add together."""
    return Expansion(*(sum(getattr(step, side) for step in steps) for side in SIDES))


def split_steps(total: Expansion, steps: int) -> list[Expansion]:
    """Divide an expansion into `steps` nearly equal ones (earlier steps take the remainder)."""
    if steps < 1:
        raise InputError(f"--steps must be >= 1, got {steps}")

    def part(amount: int, index: int) -> int:
        base, extra = divmod(amount, steps)
        return base + (1 if index < extra else 0)

    plan = [Expansion(*(part(getattr(total, side), i) for side in SIDES)) for i in range(steps)]
    return [step for step in plan if not step.is_empty]


def expand_canvas(
    rgb: np.ndarray,
    expansion: Expansion,
    *,
    fill: InitialFill = InitialFill.edge,
    overlap: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Place `rgb` on a bigger canvas; return (canvas, mask of pixels to generate).

    The mask covers the new area and, on every extended side, an `overlap` band of the old image
    (capped so that at least half of the old image stays as context).
    """
    height, width = rgb.shape[:2]
    pads = ((expansion.top, expansion.bottom), (expansion.left, expansion.right), (0, 0))
    canvas = _prefill(rgb, pads, InitialFill(fill), seed)
    mask = np.ones(canvas.shape[:2], dtype=bool)
    inner = (slice(expansion.top, expansion.top + height), slice(expansion.left, expansion.left + width))
    mask[inner] = False
    band_x, band_y = min(overlap, width // 4), min(overlap, height // 4)
    old = mask[inner]  # a view: writing marks the overlap band on the big mask
    if expansion.left:
        old[:, :band_x] = True
    if expansion.right and band_x:
        old[:, width - band_x :] = True
    if expansion.top:
        old[:band_y, :] = True
    if expansion.bottom and band_y:
        old[height - band_y :, :] = True
    return canvas, mask


def _prefill(rgb: np.ndarray, pads: tuple, fill: InitialFill, seed: int) -> np.ndarray:
    if fill in (InitialFill.edge, InitialFill.engine, InitialFill.patchmatch):
        # "engine": the engine generates the area from scratch, edge pixels are a neutral start;
        # "patchmatch": the outpaint task overwrites this with the classical engine's fill.
        return np.pad(rgb, pads, mode="edge")
    if fill == InitialFill.mirror:
        return _pad_mirror(rgb, pads)
    if fill == InitialFill.blur:
        canvas = np.pad(rgb, pads, mode="edge")
        radius = max(4, max(max(p) for p in pads[:2]) // 4)
        blurred = np.asarray(Image.fromarray(canvas).filter(ImageFilter.GaussianBlur(radius)))
        return _keep_old(blurred, rgb, pads)
    if fill == InitialFill.matched_noise:
        return _matched_noise(rgb, pads, seed)
    rng = np.random.default_rng(seed)
    mean = rgb.reshape(-1, 3).mean(axis=0)
    std = rgb.reshape(-1, 3).std(axis=0)
    shape = (rgb.shape[0] + sum(pads[0]), rgb.shape[1] + sum(pads[1]), 3)
    noise = np.clip(rng.normal(mean, std, size=shape), 0, 255).astype(np.uint8)
    return _keep_old(noise, rgb, pads)


def _matched_noise(rgb: np.ndarray, pads: tuple, seed: int) -> np.ndarray:
    """Noise with the image's magnitude spectrum and colour histograms (A1111's outpainting mk2 idea).

    Diffusion models denoise such noise into texture that fits the picture far better than flat or
    white noise: it already has the image's grain size and palette. Random phases keep it structureless.
    """
    rng = np.random.default_rng(seed)
    mirrored = _pad_mirror(rgb, pads).astype(np.float64)
    spectrum = np.abs(np.fft.fft2(mirrored - mirrored.mean(axis=(0, 1)), axes=(0, 1)))
    phase = np.exp(2j * np.pi * rng.random(spectrum.shape[:2]))[..., None]
    shaped = np.fft.ifft2(spectrum * phase, axes=(0, 1)).real
    low, high = np.percentile(shaped, [0.5, 99.5])
    noise = np.clip((shaped - low) / max(high - low, 1e-9) * 255.0, 0, 255).astype(np.uint8)
    canvas = _keep_old(noise, rgb, pads)
    new_area = np.ones(canvas.shape[:2], bool)
    top, left = pads[0][0], pads[1][0]
    new_area[top : top + rgb.shape[0], left : left + rgb.shape[1]] = False
    return match_colors(canvas, new_area, reference=~new_area, method="histogram", ring=None)


def _pad_mirror(rgb: np.ndarray, pads: tuple) -> np.ndarray:
    """Mirror padding that also works when a side grows by more than the image's own size."""
    out = rgb
    for axis in (0, 1):
        before, after = pads[axis]
        while before or after:
            size = out.shape[axis]
            step_before, step_after = min(before, size), min(after, size)
            widths = [(0, 0)] * 3
            widths[axis] = (step_before, step_after)
            out = np.pad(out, widths, mode="symmetric")
            before, after = before - step_before, after - step_after
    return out


def _keep_old(canvas: np.ndarray, rgb: np.ndarray, pads: tuple) -> np.ndarray:
    out = canvas.copy()
    top, left = pads[0][0], pads[1][0]
    out[top : top + rgb.shape[0], left : left + rgb.shape[1]] = rgb
    return out
