"""What every task returns: the image, the mask that was filled, and the recipe that made it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Result:
    """The output of a task.

    `image` is HxWx3 uint8 RGB at the output size; `alpha` is re-attached on save when the input had
    one; `mask` marks the pixels the task generated (in output coordinates); `recipe` is the complete
    JSON-able request (with the seed actually used) that `canvaslab replay` re-runs; `parameters` is
    the same recipe as AUTOMATIC1111's `parameters` text.
    """

    image: np.ndarray
    mask: np.ndarray
    seed: int
    recipe: dict[str, Any]
    parameters: str
    alpha: np.ndarray | None = None
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    def to_pil(self) -> Image.Image:
        if self.alpha is not None:
            return Image.fromarray(np.dstack([self.image, self.alpha]), "RGBA")
        return Image.fromarray(self.image, "RGB")

    def encode(self, format: str = "png", quality: int = 95) -> bytes:
        from canvaslab.core.image import encode_image

        return encode_image(
            self.image, alpha=self.alpha, format=format, quality=quality, parameters=self.parameters, recipe=self.recipe
        )

    def save(self, path: str | Path, *, format: str | None = None, quality: int = 95) -> Path:
        """Write atomically, with the recipe embedded (PNG text chunks or EXIF for JPEG/WebP)."""
        from canvaslab.core.image import save_image

        # The quality travels with the recipe: replay needs it to compare lossy outputs pixel for pixel.
        recipe = {**self.recipe, "output": {"quality": quality}}
        return save_image(
            path, self.image, alpha=self.alpha, format=format, quality=quality,
            parameters=self.parameters, recipe=recipe,
        )
