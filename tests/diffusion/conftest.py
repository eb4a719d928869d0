"""Session fixtures for the diffusion tests: tiny models built once, saved, and shared.

The environment is set before huggingface_hub is first imported: offline (a failed hub lookup
otherwise retries for tens of seconds) and one torch thread (thread spinning on 2 busy cores makes
tiny models 10-200x slower, and 1 vs 2 threads change results in the last digits).
"""

from __future__ import annotations

import importlib.util
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Without the diffusion stack the test modules skip themselves (importorskip); collection must not crash.
if all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers")):
    import torch
    from diffusers.utils import logging as diffusers_logging

    from canvaslab.engines.diffusion import models

    from . import tiny

    torch.set_num_threads(1)
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()  # tiny models trigger size/dtype warnings real ones do not

@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_folders(tiny_root: Path) -> dict[str, Path]:
    """kind -> a saved diffusers folder of that tiny model (epsilon prediction)."""
    return {kind: tiny.save_pipeline_folder(kind, tiny_root / "folders" / kind) for kind in tiny.KINDS}


@pytest.fixture(scope="session")
def tiny_single_files(tiny_root: Path) -> dict[str, Path]:
    """kind -> the same tiny model as one original-layout `.safetensors` file."""
    return {kind: tiny.save_single_file(kind, tiny_root / "single" / f"{kind}.safetensors") for kind in tiny.KINDS}


@pytest.fixture(scope="session")
def tiny_dit_folders(tiny_root: Path):
    """kind -> a saved diffusers folder of that tiny DiT-family model (tiny_dit.DIT_KINDS), built on first use."""
    from . import tiny_dit

    return tiny_dit.DitFolders(tiny_root / "dit")


@pytest.fixture(scope="session")
def v_prediction_folder(tiny_root: Path) -> Path:
    return tiny.save_pipeline_folder("sd2-txt2img", tiny_root / "folders" / "sd2-txt2img-v", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def hub_cache(tiny_root: Path, tiny_folders: dict[str, Path]) -> Path:
    """A Hugging Face cache holding the tiny inpaint model under the `sd15-inpaint` alias's hub id."""
    cache = tiny_root / "hf-cache"
    tiny.install_in_hub_cache(tiny_folders["sd-inpaint"], models.ALIASES["sd15-inpaint"].hub_id, cache)
    return cache


@pytest.fixture(autouse=True)
def _fresh_pipeline_cache():
    """Each test starts with no loaded pipeline, so cache behaviour never leaks between tests."""
    models.clear_pipeline_cache()
    yield
    models.clear_pipeline_cache()
