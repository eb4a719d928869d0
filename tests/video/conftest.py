"""The synthetic clip: a slow pan across a real photo with the cat's face crossing it (true background known)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from canvaslab.video.synthetic import SyntheticClip, synthetic_clip
from conftest import EXAMPLES

pytest.importorskip("av", reason="the video tests need PyAV (pip install 'canvaslab[video]')")


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB"))


@pytest.fixture(scope="session")
def clip() -> SyntheticClip:
    """12 frames of 96x64: tiny, so every test stays fast."""
    return synthetic_clip(photo("coffee.png"), photo("chelsea.png"), frames=12, size=(96, 64))


