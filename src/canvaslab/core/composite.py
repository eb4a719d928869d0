"""Compositing a generated image back onto the original.

The promise users rely on: outside the mask, every output pixel is the input pixel, bit for bit.
Feathering only softens the inside edge of the mask (see `mask.feather`), so it never breaks that.
Soft inpainting (`levels`) blends each pixel by its own mask level on top: level 0 is outside the
mask, so it keeps the promise, and level 1 with no feather takes the generated pixel exactly.
"""

from __future__ import annotations

import numpy as np

from canvaslab.core.mask import feather as feather_weights


def composite(
    original: np.ndarray, generated: np.ndarray, mask: np.ndarray, feather: float = 0.0,
    levels: np.ndarray | None = None,
) -> np.ndarray:
    """Generated pixels inside `mask` (softened by `feather` px), original pixels everywhere else.

    `levels` (soft inpainting: HxW float in [0, 1], 0 wherever `mask` is False) weighs each masked
    pixel: level * generated + (1 - level) * original, times the feather ramp.
    """
    if feather <= 0 and levels is None:
        return np.where(mask[..., None], generated, original)
    weights = feather_weights(mask, feather) if feather > 0 else mask.astype(np.float32)
    if levels is not None:
        weights = weights * levels.astype(np.float32)
    weights = weights[..., None]
    blended = weights * generated.astype(np.float32) + (1.0 - weights) * original.astype(np.float32)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.where(mask[..., None], blended, original)
