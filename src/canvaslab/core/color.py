"""Colour matching of a filled region to its surroundings.

Some engines return fills with a colour cast or a contrast that does not match the picture. After
compositing, `match_colors` moves the colour statistics of the pixels inside the filled region
towards those of reference pixels, leaving every pixel outside the region bit-identical.

Reference pixels, by default, are the known pixels in a ring `ring` pixels wide around the region
(a square neighbourhood): the surroundings are what the eye compares a fill with, and a whole image
often has other lighting (sky above a wall, a shadowed corner) that would pull the fill off.
``ring=None`` uses every pixel outside the region instead.

Methods:

* ``"mean-std"`` (default): per-channel mean and standard deviation transfer in YCbCr. YCbCr is
  linear, exactly invertible and separates brightness from colour, so a cast is removed without
  its correction leaking into the other channels the way it does with per-RGB-channel transfer.
* ``"histogram"``: per RGB channel CDF (quantile) matching; stronger, also fixes the shape of the
  distribution, but can posterise a fill whose values are few.
"""

from __future__ import annotations

import math

import numpy as np

from canvaslab.core.mask import as_mask
from canvaslab.errors import InputError

METHODS = ("mean-std", "histogram")
DEFAULT_RING = 32

# Standard deviation below which the fill is treated as flat (less than one grey level): scaling it
# would only amplify quantisation noise, so only its mean is moved.
_FLAT_STD = 1.0
# Bound on the std ratio, so that a near-flat fill is not turned into amplified noise.
_MAX_STD_SCALE = 4.0

# JPEG (BT.601 full range) RGB -> YCbCr without the +128 offsets, which cancel out in the transfer.
_RGB_TO_YCC = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC)


def _check_image(image: object) -> np.ndarray:
    ok = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] in (3, 4) and image.dtype == np.uint8
    if not ok:
        got = f"shape {image.shape} dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"image must be an HxWx3 (or HxWx4) uint8 array, got {got}")
    return image  # type: ignore[return-value]


def _dilate_1d(mask: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """True where some True of `mask` lies within `radius` along `axis` (a running window sum)."""
    pad = [(0, 0)] * mask.ndim
    pad[axis] = (radius + 1, radius)
    sums = np.cumsum(np.pad(mask.astype(np.int32), pad), axis=axis)
    n = mask.shape[axis]
    upper = np.take(sums, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
    lower = np.take(sums, np.arange(0, n), axis=axis)
    return (upper - lower) > 0


def ring_around(region: np.ndarray, width: int) -> np.ndarray:
    """Pixels outside `region` within `width` pixels of it (Chebyshev distance), as an HxW bool mask."""
    ring = np.zeros_like(region)
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return ring
    # Work on the region's bounding box grown by the ring only: small holes in big photos are common.
    top, bottom = max(0, ys.min() - width), min(region.shape[0], ys.max() + width + 1)
    left, right = max(0, xs.min() - width), min(region.shape[1], xs.max() + width + 1)
    crop = region[top:bottom, left:right]
    grown = _dilate_1d(_dilate_1d(crop, width, 0), width, 1)
    ring[top:bottom, left:right] = grown & ~crop
    return ring


def _reference_pixels(
    image: np.ndarray, region: np.ndarray, reference: np.ndarray | None, ring: int | None
) -> np.ndarray:
    """The Nx3 reference colours (float64) the region is matched to."""
    if reference is None:
        chosen = ~region if ring is None else ring_around(region, ring)
        pixels = image[chosen][:, :3]
        if pixels.size == 0:
            raise InputError("region covers the whole image: no pixels left to match colours to; pass reference=")
        return pixels.astype(np.float64)
    if not isinstance(reference, np.ndarray):
        raise InputError(f"reference must be an HxW bool mask or an array of RGB pixels, got {type(reference).__name__}")
    if reference.ndim == 2 and reference.dtype == bool:
        mask = as_mask(reference, shape=region.shape, name="reference")
        # The region's own pixels carry the cast being removed, so they never count as reference.
        pixels = image[mask & ~region][:, :3]
        if pixels.size == 0:
            raise InputError("reference selects no pixels outside region: nothing to match colours to")
        return pixels.astype(np.float64)
    if reference.dtype != np.uint8 or reference.ndim < 2 or reference.shape[-1] not in (3, 4):
        got = f"shape {reference.shape} dtype {reference.dtype}"
        raise InputError(f"reference must be an HxW bool mask or a ...x3 uint8 array of pixels, got {got}")
    pixels = reference.reshape(-1, reference.shape[-1])[:, :3]
    if pixels.size == 0:
        raise InputError(f"reference holds no pixels, got shape {reference.shape}")
    return pixels.astype(np.float64)


def _match_mean_std(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Nx3 RGB `source` with the YCbCr per-channel mean and std of `reference` (float64)."""
    src = source @ _RGB_TO_YCC.T
    ref = reference @ _RGB_TO_YCC.T
    src_mean, src_std = src.mean(axis=0), src.std(axis=0)
    ref_mean, ref_std = ref.mean(axis=0), ref.std(axis=0)
    scale = np.where(src_std >= _FLAT_STD, ref_std / np.maximum(src_std, _FLAT_STD), 1.0)
    scale = np.clip(scale, 1.0 / _MAX_STD_SCALE, _MAX_STD_SCALE)
    matched = (src - src_mean) * scale + ref_mean
    return matched @ _YCC_TO_RGB.T


def _channel_lookup(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """A 256-entry table mapping source values so their CDF follows the reference CDF."""
    src_counts = np.bincount(source, minlength=256)
    ref_counts = np.bincount(reference, minlength=256)
    src_quantiles = np.cumsum(src_counts) / source.size
    ref_values = np.nonzero(ref_counts)[0]
    ref_quantiles = np.cumsum(ref_counts[ref_values]) / reference.size
    return np.interp(src_quantiles, ref_quantiles, ref_values.astype(np.float64))


def _match_histogram(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Nx3 RGB `source` with each channel's histogram matched to `reference` (float64)."""
    src = source.astype(np.uint8)
    ref = reference.astype(np.uint8)
    out = np.empty(source.shape, np.float64)
    for channel in range(3):
        table = _channel_lookup(src[:, channel], ref[:, channel])
        out[:, channel] = table[src[:, channel]]
    return out


def match_colors(
    image: np.ndarray,
    region: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    method: str = "mean-std",
    strength: float = 1.0,
    ring: int | None = DEFAULT_RING,
) -> np.ndarray:
    """A copy of `image` whose pixels inside `region` take the colour statistics of the reference.

    * `image`: HxWx3 uint8 (HxWx4 accepted; alpha is left alone).
    * `region`: HxW bool, True on the filled pixels to adjust. Pixels outside it are returned
      bit-identical; an empty region returns a plain copy.
    * `reference`: None (default) for the known pixels in a ring `ring` pixels wide around the
      region (``ring=None``: all pixels outside it); an HxW bool mask choosing pixels of `image`
      (pixels inside `region` are left out); or any ...x3 uint8 array whose pixels are the reference
      (e.g. another photo of the same wall).
    * `method`: ``"mean-std"`` or ``"histogram"`` (see the module docstring).
    * `strength`: 0 keeps the fill as it is, 1 applies the full match, in between blends linearly.
    """
    image = _check_image(image)
    region = as_mask(region, shape=image.shape[:2], name="region")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    strength = float(strength)
    if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise InputError(f"strength must be between 0 and 1, got {strength}")
    if ring is not None and (isinstance(ring, bool) or not isinstance(ring, (int, np.integer)) or ring < 1):
        raise InputError(f"ring must be a positive integer or None, got {ring!r}")

    out = image.copy()
    if not region.any():
        return out
    ref = _reference_pixels(image, region, reference, None if ring is None else int(ring))
    if strength == 0.0:
        return out
    source = image[region][:, :3].astype(np.float64)
    matched = _match_mean_std(source, ref) if method == "mean-std" else _match_histogram(source, ref)
    blended = source + strength * (matched - source)
    out[region, :3] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
