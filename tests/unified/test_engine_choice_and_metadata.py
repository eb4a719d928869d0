"""Issue 10 seen from outside, on the tiny Show-o bundle: the model picks the engine, and outputs say
what made them the way A1111 readers expect."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

import canvaslab  # noqa: E402
from canvaslab.engines.unified import bundle  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402
from canvaslab.tasks import requests  # noqa: E402
from infotext import check_output  # noqa: E402


@pytest.fixture(autouse=True)
def _own_hash_cache(tmp_path, monkeypatch):
    """Model digests go to this test's folder, not to the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def picture(photo):
    return np.ascontiguousarray(photo[10:74, 30:94])


@pytest.fixture(scope="module")
def hole(picture):
    mask = np.zeros(picture.shape[:2], bool)
    mask[20:40, 24:50] = True
    return mask


def test_request_models_know_the_unified_aliases_without_torch():
    assert set(requests.UNIFIED_ALIASES) == set(bundle.ALIASES)


def test_a_show_o_folder_without_engine_runs_unified(picture, hole, bundle_folder):
    result = canvaslab.inpaint(picture, hole, model=str(bundle_folder), prompt="a table", steps=2, seed=1,
                               guidance_scale=1.5)
    assert result.recipe["request"]["engine"] == "unified"
    assert "Sampler: MaskGIT" in result.parameters
    with pytest.raises(InputError, match="^--scheduler does not apply to the unified engine"):
        canvaslab.inpaint(picture, hole, model=str(bundle_folder), scheduler="euler")
    image = canvaslab.generate(model=str(bundle_folder), steps=2, seed=1, size=64)
    assert image.recipe["request"]["engine"] == "unified"


PROMPT = 'a "quiet" café, 画像: sunrise\nsecond line'
NEGATIVE = "blurry, lowres"


def test_every_task_s_output_parses_as_a1111(tmp_path, picture, hole, bundle_folder):
    common = {"model": str(bundle_folder), "seed": 5, "guidance_scale": 1.5, "prompt": PROMPT, "negative_prompt": NEGATIVE}
    results = {
        "inpaint": canvaslab.inpaint(picture, hole, steps=2, **common),
        "outpaint": canvaslab.outpaint(picture, right=16, sampling_steps=2, **common),
        "generate": canvaslab.generate(steps=2, size=64, **common),
    }
    for task, result in results.items():
        settings = check_output(result.save(tmp_path / f"{task}.png"), prompt=PROMPT, negative=NEGATIVE, seed=5)
        assert settings["Sampler"] == "MaskGIT" and settings["Steps"] == "2", task
        # A Show-o folder is named by its folder name and the hash of its weight files, not by its path.
        assert settings["Model"] == bundle_folder.name and len(settings["Model hash"]) == 10
        assert str(bundle_folder.parent) not in result.parameters
