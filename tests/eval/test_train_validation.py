"""Training validation scores its outputs with eval's weight-free metrics, writes them beside the grid and
logs them to the trackers."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from canvaslab.eval.metrics.pixels import full_metrics, hole_metrics  # noqa: E402

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")
pytest.importorskip("yaml")

from canvaslab.train.validation import Case, score_case  # noqa: E402

from .conftest import rgb  # noqa: E402


def test_inpaint_cases_are_scored_on_the_composite_and_edits_on_the_whole_image():
    target, output = rgb(1, (40, 56)), rgb(2, (40, 56))
    mask = np.zeros((40, 56), bool)
    mask[10:30, 20:40] = True
    scores = score_case(Case("p", [target], mask, target), output)
    composited = target.copy()
    composited[mask] = output[mask]
    expected = hole_metrics(composited, target, mask)
    assert scores == {k: expected[k] for k in ("psnr_hole", "ssim_hole", "l1_hole", "detail", "seam")}
    # what the model did outside the mask does not count: inference pastes the input back there
    elsewhere = output.copy()
    elsewhere[~mask] = 0
    assert score_case(Case("p", [target], mask, target), elsewhere) == scores
    assert score_case(Case("p", [rgb(3, (40, 56))], None, target), output) == full_metrics(output, target)
    assert score_case(Case("p", [target], mask), output) == {}  # no ground truth: nothing to score


def test_training_logs_validation_metrics(tmp_path_factory):
    from diffusion.tiny import save_pipeline_folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from canvaslab.data.mini import write_mini
    from canvaslab.train.config import validate_config
    from canvaslab.train.trainer import train

    root = tmp_path_factory.mktemp("train-validation")
    base = save_pipeline_folder("sd-inpaint", root / "base")
    data = {w.layout: w.path for w in write_mini(root / "data", kind="all", count=4, size=64, frames=3)}["inpaint-folder"]
    config = validate_config({
        "output": str(root / "run"), "model": {"base": str(base)}, "data": {"path": str(data), "resolution": 64},
        "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}, "checkpoints": {"every": 1000, "keep": 1},
        "validation": {"every": 2, "count": 2, "steps": 2}, "log": {"trackers": ["tensorboard"], "every": 1000},
        "export": "none",
    })
    report = train(config)
    grid = root / "run" / "validation" / "step_000002.png"
    assert [str(p) for p in report.validations] == [str(grid)]
    record = json.loads(grid.with_suffix(".json").read_text())
    assert record["step"] == 2 and len(record["cases"]) == 2
    assert set(record["mean"]) == {"psnr_hole", "ssim_hole", "l1_hole", "detail", "seam"}
    assert record["mean"]["psnr_hole"] == pytest.approx(np.mean([c["psnr_hole"] for c in record["cases"]]))
    assert 0 < record["mean"]["psnr_hole"] < 100  # a random tiny model does not reproduce the photo
    events = EventAccumulator(str(next((root / "run" / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "validation/psnr_hole" in events.Tags()["scalars"]
    (logged,) = events.Scalars("validation/psnr_hole")
    assert logged.step == 2 and logged.value == pytest.approx(record["mean"]["psnr_hole"], rel=1e-5)
