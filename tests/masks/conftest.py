"""Tiny mask models, built once per test session (a few seconds in all).

Offline and one torch thread, set before huggingface_hub and torch are first imported (see
tests/diffusion/conftest.py for why).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("transformers", reason="the mask model tests need the diffusion extra (torch, transformers)")


@pytest.fixture(scope="session")
def mask_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from masks import tiny

    root = tmp_path_factory.mktemp("mask-models")
    return {
        "sam": tiny.save_sam(root / "sam", "sam"),
        "sam_hq": tiny.save_sam(root / "sam-hq", "sam_hq"),
        "sam2": tiny.save_sam(root / "sam2", "sam2"),
        "clipseg": tiny.save_clipseg(root / "clipseg"),
        "owlvit": tiny.save_owlvit(root / "owlvit"),
        "owlv2": tiny.save_owlv2(root / "owlv2"),
        "grounding": tiny.save_grounding_dino(root / "grounding-dino"),
    }
