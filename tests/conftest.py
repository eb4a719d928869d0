"""Shared fixtures: small real photos (from the shipped examples) and masks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real 150x100 photo crop with odd-ish size (not a multiple of 8)."""
    img = Image.open(EXAMPLES / "coffee.png").convert("RGB").resize((150, 100), Image.Resampling.LANCZOS)
    return np.asarray(img).copy()


@pytest.fixture(scope="session")
def box_mask(photo: np.ndarray) -> np.ndarray:
    mask = np.zeros(photo.shape[:2], bool)
    mask[30:60, 50:90] = True
    return mask


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path)
    return path
