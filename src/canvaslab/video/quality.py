"""How good a filled clip is, against its true background (a synthetic clip's) and over time.

- `hole_psnr`: PSNR (dB) of the filled pixels against the truth, over every frame's hole.
- `warping_error`: the flow-compensated difference between neighbouring frames inside the holes, the
  temporal measure video inpainting papers report (Lai et al., ECCV 2018): a fill that flickers or
  swims differs from the next frame moved back by the true motion, a stable one does not. Mean
  absolute difference in 0-255 levels; the truth itself scores ~0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def hole_psnr(results: Sequence[np.ndarray], truth: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """PSNR over the masked pixels of all frames together."""
    squared = count = 0.0
    for result, true, mask in zip(results, truth, masks):
        diff = result[mask].astype(np.float64) - true[mask].astype(np.float64)
        squared += float((diff**2).sum())
        count += diff.size
    mse = squared / max(count, 1)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def warping_error(results: Sequence[np.ndarray], masks: Sequence[np.ndarray], flows: Sequence[np.ndarray]) -> float:
    """Mean |result[t](p) - result[t+1](p + flow[t](p))| over the hole pixels p of frame t whose target is
    inside the picture; `flows[t]` (HxWx2) is the true motion from frame t to t+1."""
    total = count = 0.0
    for t in range(len(results) - 1):
        ys, xs = np.nonzero(masks[t])
        if not len(ys):
            continue
        height, width = masks[t].shape
        tx = xs + flows[t][ys, xs, 0]
        ty = ys + flows[t][ys, xs, 1]
        inside = (tx >= 0) & (tx <= width - 1) & (ty >= 0) & (ty <= height - 1)
        ys, xs, tx, ty = ys[inside], xs[inside], tx[inside], ty[inside]
        x0, y0 = np.floor(tx).astype(int), np.floor(ty).astype(int)
        x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
        fx, fy = (tx - x0)[:, None], (ty - y0)[:, None]
        nxt = results[t + 1].astype(np.float64)
        moved = (nxt[y0, x0] * (1 - fx) + nxt[y0, x1] * fx) * (1 - fy) + (nxt[y1, x0] * (1 - fx) + nxt[y1, x1] * fx) * fy
        total += float(np.abs(results[t][ys, xs].astype(np.float64) - moved).mean(axis=1).sum())
        count += len(ys)
    return total / max(count, 1)


def pan_flows(shape: tuple[int, int], frames: int, pan: int) -> list[np.ndarray]:
    """The true motion of a synthetic clip's background: `pan` px to the left per frame."""
    flow = np.zeros((*shape, 2), np.float32)
    flow[..., 0] = -pan
    return [flow] * (frames - 1)
