"""Shared fixtures: small real photos (from the shipped examples) and masks; the network guard."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# Caches the code writes under the user's home (model hashes, Hugging Face, torch hub) go to a folder of
# this test process instead: tests neither read what a developer has cached nor leave files behind.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="canvaslab-test-cache-")

# The network guard (tests/netguard/sitecustomize.py): this process and every Python subprocess a test
# starts refuse connections off this machine and log them; `_no_network` fails the test that tried.
NETGUARD = Path(__file__).resolve().parent / "netguard"
os.environ["CANVASLAB_NETGUARD_LOG"] = str(Path(tempfile.gettempdir()) / f"canvaslab-netguard-{os.getpid()}.log")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
from netguard.sitecustomize import install as _install_network_guard  # noqa: E402

_install_network_guard()


@pytest.fixture(autouse=True)
def _no_network():
    log = Path(os.environ["CANVASLAB_NETGUARD_LOG"])
    start = log.stat().st_size if log.exists() else 0
    yield
    if log.exists() and log.stat().st_size > start:
        with log.open(encoding="utf-8") as handle:
            handle.seek(start)
            attempts = handle.read().strip()
        pytest.fail(f"this test tried to reach the network (the suite runs offline):\n{attempts}", pytrace=False)


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
