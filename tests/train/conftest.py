"""Fixtures for the trainer tests: tiny base models (saved as diffusers folders) and tiny datasets.

Offline and one torch thread, as in tests/diffusion (the environment must be set before
huggingface_hub is imported).
"""

from __future__ import annotations

import importlib.util
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

HAVE_STACK = all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers", "peft", "accelerate", "yaml"))
if HAVE_STACK:
    import torch

    from diffusion import tiny

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> tiny base model folder: sd-txt2img (4 ch), sd-inpaint (9), sd-pix2pix (8), sdxl-txt2img."""
    root = tmp_path_factory.mktemp("bases")
    return {kind: tiny.save_pipeline_folder(kind, root / kind)
            for kind in ("sd-txt2img", "sd-inpaint", "sd-pix2pix", "sdxl-txt2img")}


@pytest.fixture(scope="session")
def mini(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """layout -> tiny synthetic dataset written by `canvaslab data mini` (8 items, 64 px, 3 frames)."""
    from canvaslab.data.mini import write_mini

    root = tmp_path_factory.mktemp("mini") / "data"
    return {written.layout: Path(written.path) for written in write_mini(root, kind="all", count=8, size=64, frames=3)}


def base_config(base: Path, dataset: Path, output: Path, **sections) -> dict:
    """A small, fast config as a dict (sections merged over these defaults)."""
    config = {
        "output": str(output),
        "model": {"base": str(base)},
        "data": {"path": str(dataset), "resolution": 64},
        "train": {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-3},
        "checkpoints": {"every": 1000, "keep": 2},
        "validation": {"count": 0},
        "log": {"trackers": [], "every": 1000},
        "export": "none",
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(name, {}).update(values)
        else:
            config[name] = values
    return config
