"""Weight-free per-case metrics: PSNR, SSIM and L1 over the hole and the whole image, detail ratio,
seam visibility, and how much a system changed outside its mask.

Conventions (every number is computed on uint8 RGB, 0..255, the reference as ground truth):

- PSNR (dB): ``10 log10(255^2 / MSE)`` over all channels of the pixels counted (hole or whole image),
  as scikit-image's `peak_signal_noise_ratio(data_range=255)`; identical pixels give `PSNR_CAP` (100 dB)
  instead of infinity, so means stay finite.
- SSIM: Wang et al.'s index with an 11x11 Gaussian window (sigma 1.5), population covariances,
  K1 = 0.01, K2 = 0.03, per channel: scikit-image's `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255)`. `ssim` is its mean map without the 5-px
  border (as scikit-image reports it); `ssim_hole` is the channel-mean map averaged over hole pixels.
- L1: mean absolute difference on a 0..1 scale.
- detail: gradient energy (mean squared 3x3 Sobel magnitude of the grey image, ITU-R 601 luma
  0.299 R + 0.587 G + 0.114 B, reflected borders) of the result over the
  hole, divided by the reference's: 1 is as much texture as the real photo, blur scores low.
- seam: mean |G(result) - G(reference)| over pixels within 3 px of the hole boundary (inside and
  out; the image border is not a boundary), divided by the reference's mean G there; 0 is ideal.
- outside_changed / outside_l1: the fraction of pixels outside the hole whose value changed, and
  their mean absolute change (0..1). canvaslab's tasks guarantee 0 (bit-identical outside the mask);
  other tools' outputs often are not.

The filters are OpenCV's on float32 images (fast, and they release the GIL, so `score` runs in
threads); tests hold them to scikit-image's values.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import cv2
import numpy as np

from canvaslab.eval.metrics.base import Metric, Sample

PSNR_CAP = 100.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # scikit-image: int(truncate * sigma + 0.5) with truncate 3.5 -> an 11x11 window
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2
SEAM_WIDTH = 3
WORKSPACE_LIMIT = 1 << 21  # float32 values per buffer kept between calls (9 buffers: 72 MB)


def psnr_from_mse(mse: float) -> float:
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


_work = threading.local()


def _workspace(shape: tuple[int, ...], count: int) -> list[np.ndarray]:
    """float32 buffers reused by one thread's calls: fresh 512x512x3 arrays cost more in page faults
    than the arithmetic done in them (measured: 20 of 35 ms per SSIM map went to the kernel)."""
    cached = getattr(_work, "buffers", None)
    if cached is None or cached[0] != shape or len(cached[1]) < count:
        cached = (shape, [np.empty(shape, np.float32) for _ in range(count)])
        # kept for the next call only up to about 1 Mpx RGB: a thread does not hold on to gigabytes
        _work.buffers = cached if math.prod(shape) <= WORKSPACE_LIMIT else None
    return cached[1]


def _blur(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    size = 2 * SSIM_RADIUS + 1
    return cv2.GaussianBlur(x, (size, size), SSIM_SIGMA, dst=out, borderType=cv2.BORDER_REFLECT)


def _ssim_in_workspace(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`ssim_map` in this thread's workspace: valid until the thread's next call."""
    x, y, product, mu_x, mu_y, xx, yy, xy, t = _workspace(a.shape, 9)
    # Centring keeps E[x^2] - E[x]^2 accurate in float32 (variance does not change with a shift).
    np.subtract(a, 127.5, out=x, dtype=np.float32)
    np.subtract(b, 127.5, out=y, dtype=np.float32)
    _blur(x, mu_x)
    _blur(y, mu_y)
    for left, right, blurred in ((x, x, xx), (y, y, yy), (x, y, xy)):
        _blur(np.multiply(left, right, out=product), blurred)
    cov = np.subtract(xy, np.multiply(mu_x, mu_y, out=t), out=xy)  # E[xy] - E[x]E[y]
    variances = np.add(xx, yy, out=xx)
    variances -= np.multiply(mu_x, mu_x, out=t)
    variances -= np.multiply(mu_y, mu_y, out=t)
    mu_x += 127.5  # the means are shifted too: add the shift back where SSIM uses them directly
    mu_y += 127.5
    numerator = np.multiply(mu_x, mu_y, out=t)
    numerator *= 2
    numerator += _C1
    denominator = np.multiply(mu_x, mu_x, out=x)
    denominator += np.multiply(mu_y, mu_y, out=y)
    denominator += _C1
    cov *= 2
    cov += _C2
    variances += _C2
    numerator *= cov
    denominator *= variances
    return np.divide(numerator, denominator, out=numerator)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel, per-channel SSIM of two HxWxC images (0..255), float32."""
    return _ssim_in_workspace(a, b).copy()


def sobel_magnitude(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2GRAY)  # 0.299 R + 0.587 G + 0.114 B, unrounded
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    # not cv2.magnitude: its SIMD path depends on the buffers' alignment, so one image measured twice
    # could differ in the last bit (identical images must score a seam of exactly 0)
    return np.sqrt(gx * gx + gy * gy)


def boundary_band(hole: np.ndarray, width: int = SEAM_WIDTH) -> np.ndarray:
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    h8 = hole.astype(np.uint8)
    # Replicated borders keep the image edge from counting as a hole boundary.
    grown = cv2.dilate(h8, kernel, borderType=cv2.BORDER_REPLICATE) > 0
    shrunk = cv2.erode(h8, kernel, borderType=cv2.BORDER_REPLICATE) > 0
    return grown & ~shrunk


def _check(output: np.ndarray, reference: np.ndarray, hole: np.ndarray | None) -> None:
    if output.shape != reference.shape:
        raise ValueError(f"output is {output.shape[1]}x{output.shape[0]}, its reference {reference.shape[1]}x{reference.shape[0]}")
    if hole is not None and hole.shape != output.shape[:2]:
        raise ValueError(f"mask is {hole.shape[1]}x{hole.shape[0]}, the image {output.shape[1]}x{output.shape[0]}")


def _mean(values: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean over every channel of the pixels where `mask` (uint8) is set; OpenCV's masked mean is
    several times faster than numpy's boolean indexing."""
    channels = 1 if values.ndim == 2 else values.shape[2]
    return float(np.mean(cv2.mean(values, mask=mask)[:channels]))


def _norm(output: np.ndarray, reference: np.ndarray, kind: int, mask: np.ndarray | None = None) -> float:
    """Mean squared (NORM_L2SQR) or absolute (NORM_L1) difference per value, over the pixels where
    `mask` is set: OpenCV sums in double precision without a temporary image."""
    channels = 1 if output.ndim == 2 else output.shape[2]
    count = (output.size if mask is None else np.count_nonzero(mask) * channels)
    return cv2.norm(output, reference, kind, mask=mask) / max(count, 1)


def full_metrics(output: np.ndarray, reference: np.ndarray, smap: np.ndarray | None = None) -> dict[str, float]:
    """PSNR / SSIM / L1 over the whole image (an edit with a reference output, or any inpaint)."""
    _check(output, reference, None)
    smap = _ssim_in_workspace(output, reference) if smap is None else smap
    r = SSIM_RADIUS
    inner = smap[r:-r, r:-r] if min(smap.shape[:2]) > 2 * r else smap
    return {"psnr": psnr_from_mse(_norm(output, reference, cv2.NORM_L2SQR)), "ssim": _mean(np.ascontiguousarray(inner)),
            "l1": _norm(output, reference, cv2.NORM_L1) / 255.0}


def hole_metrics(output: np.ndarray, reference: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    """Every weight-free metric of an inpainting case (`hole`: HxW bool, True = filled)."""
    _check(output, reference, hole)
    if not hole.any():
        raise ValueError("the mask is empty: there is no hole to measure")
    smap = _ssim_in_workspace(output, reference)
    values = full_metrics(output, reference, smap)
    inside = hole.astype(np.uint8)
    outside = 1 - inside
    values["psnr_hole"] = psnr_from_mse(_norm(output, reference, cv2.NORM_L2SQR, inside))
    values["ssim_hole"] = _mean(smap, inside)
    values["l1_hole"] = _norm(output, reference, cv2.NORM_L1, inside) / 255.0
    g_out, g_ref = sobel_magnitude(output), sobel_magnitude(reference)
    values["detail"] = _mean(g_out * g_out, inside) / max(_mean(g_ref * g_ref, inside), 1e-6)
    band = boundary_band(hole).astype(np.uint8)
    if band.any():
        values["seam"] = _mean(cv2.absdiff(g_out, g_ref), band) / max(_mean(g_ref, band), 1e-6)
    else:
        values["seam"] = 0.0
    if outside.any():
        diff = cv2.absdiff(output, reference)
        changed = cv2.max(cv2.max(diff[..., 0], diff[..., 1]), diff[..., 2]) > 0
        values["outside_changed"] = float(np.count_nonzero(changed & (outside > 0))) / float(np.count_nonzero(outside))
        values["outside_l1"] = _norm(output, reference, cv2.NORM_L1, outside) / 255.0
    else:
        values["outside_changed"] = values["outside_l1"] = 0.0
    return values


class PixelMetrics(Metric):
    """The weight-free family: every column above for inpainting cases; PSNR/SSIM/L1 of the whole
    image for edits that have a reference output."""

    names: ClassVar[tuple[str, ...]] = ("pixels",)
    columns: ClassVar[dict[str, bool | None]] = {
        "psnr_hole": True, "ssim_hole": True, "l1_hole": False, "psnr": True, "ssim": True, "l1": False,
        "detail": None, "seam": False, "outside_changed": False, "outside_l1": False,
    }
    ideal: ClassVar[dict[str, float]] = {"detail": 1.0}
    threads = 2

    def score(self, samples: list[Sample]) -> list[dict[str, Any]]:
        def one(sample: Sample) -> dict[str, Any]:
            if sample.reference is None:
                return {}
            if sample.mask is None:
                return full_metrics(sample.output, sample.reference)
            return hole_metrics(sample.output, sample.reference, sample.mask)

        if len(samples) == 1 or self.threads <= 1:
            return [one(s) for s in samples]
        # OpenCV releases the GIL in its filters, so threads share the cores without pickling images
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(one, samples))
