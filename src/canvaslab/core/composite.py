"""Compositing a generated image back onto the original.

The promise users rely on: outside the mask, every output pixel is the input pixel, bit for bit.
Feathering only softens the inside edge of the mask (see `mask.feather`), so it never breaks that.
"""

from __future__ import annotations

import numpy as np

from canvaslab.core.mask import feather as feather_weights


def composite(original: np.ndarray, generated: np.ndarray, mask: np.ndarray, feather: float = 0.0) -> np.ndarray:
    """Generated pixels inside `mask` (softened by `feather` px), original pixels everywhere else."""
    if feather <= 0:
        return np.where(mask[..., None], generated, original)
    weights = feather_weights(mask, feather)[..., None]
    blended = weights * generated.astype(np.float32) + (1.0 - weights) * original.astype(np.float32)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.where(mask[..., None], blended, original)
