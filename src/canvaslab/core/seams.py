"""How visible an image's wrap-around seams are: does it tile?

Placed side by side, an image's right column meets its left column (axis x) and, stacked, its bottom
row meets its top row (axis y). The seam is invisible when the step across it is no larger than the
steps between neighbouring pixels inside the image. So, per axis:

- each *line* of neighbours (for x: the pairs of adjacent columns x, x+1; the wrap line is the pair
  last column, first column) gets its error: the mean absolute difference between the two, over the
  line's pixels and the colour channels, in 0-255 levels;
- `interior` is the median error of the image's own lines (the typical neighbour difference; a
  median, so one strong edge in the picture does not move it), `seam` the wrap line's error;
- `ratio` = seam / interior: at most 1 means the seam is as quiet as a typical interior line (the
  texture criterion of issue 11); `rank` is the share of interior lines quieter than the seam;
- `score` = (seam - interior) / spread, with `spread` the interior lines' robust standard deviation
  (1.4826 x their median absolute deviation): how far the seam stands out from the image's own lines.

The verdict (`seamless`) is score <= 3: the seam is not an outlier among the lines. Not ratio <= 1,
because a line of an image that tiles perfectly is as likely to be above the median as below it (and
one in N lines is the loudest), so that test would call half of all perfect tiles seamed. A photo's
edges are unrelated: its seam is usually several times the interior's, scores in the tens. A texture
made seamless by filling a band over the seam (tasks/texture.py) is usually quieter than typical
(ratio below 1), since the fill is smoother than the photo around it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from canvaslab.errors import InputError

AXES = ("x", "y")
OUTLIER_SCORE = 3.0  # a seam scoring above this stands out from the image's lines: it shows
_MAD_TO_SD = 1.4826  # median absolute deviation -> standard deviation, for normally distributed values


@dataclass(frozen=True)
class AxisSeam:
    """The wrap-around seam of one axis: x (right edge meets left) or y (bottom edge meets top)."""

    axis: str
    seam: float  # mean |difference| across the wrap, 0-255 levels
    interior: float  # median of the same over the interior's neighbour lines
    spread: float  # robust standard deviation of the interior lines' errors
    ratio: float  # seam / interior (inf when the interior is perfectly flat and the seam is not)
    score: float  # (seam - interior) / spread: how many spreads the seam stands out
    rank: float  # share of interior lines with a smaller error than the seam, 0-1

    @property
    def seamless(self) -> bool:
        return self.score <= OUTLIER_SCORE


@dataclass(frozen=True)
class SeamReport:
    """The seams of the axes asked for; `seamless` when none is louder than its interior."""

    width: int
    height: int
    axes: dict[str, AxisSeam]

    @property
    def seamless(self) -> bool:
        return all(seam.seamless for seam in self.axes.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "width": self.width, "height": self.height, "seamless": self.seamless,
            "axes": {name: {**asdict(seam), "seamless": seam.seamless} for name, seam in self.axes.items()},
        }

    def lines(self) -> list[str]:
        """One readable line per axis."""
        edges = {"x": "right edge -> left edge", "y": "bottom edge -> top edge"}
        return [
            f"{name} ({edges[name]}): seam {seam.seam:.2f}, interior {seam.interior:.2f} +- {seam.spread:.2f}, "
            f"ratio {seam.ratio:.2f}, score {seam.score:.1f}, louder than {100 * seam.rank:.0f}% of the lines: "
            f"{'seamless' if seam.seamless else 'SEAM'}"
            for name, seam in self.axes.items()
        ]


def line_errors(image: np.ndarray, axis: str) -> tuple[np.ndarray, float]:
    """(errors of the interior lines, in order; the wrap line's error) along `axis` ("x" or "y")."""
    pixels = _as_float(image)
    if axis not in AXES:
        raise InputError(f"axis must be x or y, got {axis!r}")
    if axis == "y":
        pixels = pixels.transpose(1, 0, 2)  # rows become columns: the same code measures both
    if pixels.shape[1] < 3:
        raise InputError(f"a seam needs at least 3 pixels along {axis}, got {pixels.shape[1]}")
    steps = np.abs(np.diff(pixels, axis=1)).mean(axis=(0, 2))  # one error per pair of neighbouring lines
    wrap = float(np.abs(pixels[:, 0] - pixels[:, -1]).mean())
    return steps, wrap


def seam_report(image: np.ndarray, axes: tuple[str, ...] | str = AXES) -> SeamReport:
    """The wrap-around seams of an HxW or HxWxC image (uint8 or float in 0-255) along `axes`."""
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    if not names or any(name not in AXES for name in names):
        raise InputError(f"axes must be some of x, y; got {axes!r}")
    found = {}
    for name in names:
        steps, wrap = line_errors(image, name)
        interior = float(np.median(steps))
        spread = _MAD_TO_SD * float(np.median(np.abs(steps - interior)))
        found[name] = AxisSeam(
            name, wrap, interior, spread, _ratio(wrap, interior), _ratio(wrap - interior, spread),
            float(np.mean(steps < wrap)),
        )
    height, width = np.asarray(image).shape[:2]
    return SeamReport(width, height, found)


def _ratio(value: float, scale: float) -> float:
    """value / scale, where a scale of 0 (a perfectly flat interior) makes any excess infinite."""
    if scale > 0:
        return value / scale
    return 0.0 if value <= 0 else float("inf")


def _as_float(image: np.ndarray) -> np.ndarray:
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] == 0:
        raise InputError(f"expected an HxW or HxWxC image, got shape {pixels.shape}")
    return pixels.astype(np.float64)
