"""Session fixtures for the unified-model tests: tiny seeded models, and the same saved to disk.

The environment is set before huggingface_hub is first imported (offline: a failed hub lookup
otherwise retries for tens of seconds) and torch runs one thread (tiny models on 2 busy cores are
10-200x slower with thread spinning, and the thread count changes results in the last digits).
"""

from __future__ import annotations

import importlib.util
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Without torch/transformers the test modules skip themselves (importorskip); collection must not crash.
if all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
    import torch

    from canvaslab.engines.unified.loading import save_magvit, save_unified_model

    from . import tiny

    torch.set_num_threads(1)

    @pytest.fixture(scope="session")
    def model():
        return tiny.tiny_model()

    @pytest.fixture(scope="session")
    def magvit():
        return tiny.tiny_magvit()

    @pytest.fixture(scope="session")
    def model_folder(tmp_path_factory: pytest.TempPathFactory, model) -> Path:
        return save_unified_model(model, tmp_path_factory.mktemp("unified") / "tiny-showo")

    @pytest.fixture(scope="session")
    def magvit_folder(tmp_path_factory: pytest.TempPathFactory, magvit) -> Path:
        return save_magvit(magvit, tmp_path_factory.mktemp("unified") / "tiny-magvit")

    @pytest.fixture(scope="session")
    def bundle_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
        """The tiny self-contained checkpoint (model, tokenizer, magvit/) every module that only reads it shares."""
        return tiny.shared_bundle_folder(tmp_path_factory)
