"""Real photographs for the rule-mask tests: the ones scikit-image ships (a test dependency) in its
data folder, read from disk (no download), cropped and resized as each test needs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_SPEC = importlib.util.find_spec("skimage")
DATA = Path(_SPEC.origin).parent / "data" if _SPEC and _SPEC.origin else None
PHOTOS = (
    "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "hubble_deep_field.jpg", "retina.jpg", "coins.png", "camera.png", "moon.png", "ihc.png",
)


def photo(name: str, scale: float = 1.0) -> np.ndarray:
    """A photo as HxWx3 uint8, optionally resized (bilinear) by `scale`."""
    if DATA is None or not (DATA / name).is_file():
        pytest.skip("these tests read the photos scikit-image ships: pip install scikit-image")
    image = Image.open(DATA / name).convert("RGB")
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    return np.asarray(image).copy()


def crops(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """`count` crops of `size` (width, height) from different photos and places, each a "photo" of its own."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        image = Image.fromarray(photo(PHOTOS[i % len(PHOTOS)]))
        scale = rng.uniform(0.5, 1.0) * min(image.width / size[0], image.height / size[1])
        width, height = int(size[0] * scale), int(size[1] * scale)
        x, y = rng.integers(0, image.width - width + 1), rng.integers(0, image.height - height + 1)
        out.append(np.asarray(image.crop((x, y, x + width, y + height)).resize(size, Image.Resampling.LANCZOS)))
    return out
