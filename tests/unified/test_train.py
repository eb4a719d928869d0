"""`canvaslab train unified` on a tiny model: the loop trains, resumes exactly, stops on signals, exports a
folder every unified command loads, and 2 processes split the rows."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("accelerate")

from canvaslab.train.config import validate_config  # noqa: E402


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def _square(colour: str, size: int = 64) -> np.ndarray:
    image = np.full((size, size, 3), 128, np.uint8)
    image[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = COLOURS[colour]
    return image


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unified-data")
    names = list(COLOURS) * 4
    keys = {kind: [f"{kind}{i:02d}" for i in range(len(names))] for kind in ("t2i", "lm", "mmu")}
    t2i = pa.table({"key": keys["t2i"], "image": [_png(_square(c)) for c in names],
                    "caption": [f"a {c} square" for c in names], "class_name": [c for c in names]})
    lm = pa.table({"key": keys["lm"], "text": [f"the {c} square is {c}." for c in names]})
    mmu = pa.table({"key": keys["mmu"], "image": [_png(_square(c)) for c in names],
                    "question": ["what colour?"] * len(names), "answer": names})
    paths = {}
    for name, table in (("t2i", t2i), ("lm", lm), ("mmu", mmu)):
        paths[name] = root / f"{name}.parquet"
        pq.write_table(table, paths[name], row_group_size=4)
    return paths


@pytest.fixture(scope="module")
def base(bundle_folder) -> Path:
    return bundle_folder  # read only: training writes its own output folder


def config(base: Path, data: dict[str, Path], output: Path, **train) -> dict:
    return {
        "objective": "unified", "output": str(output), "model": {"base": str(base)},
        "data": {"t2i": [str(data["t2i"])], "lm": [str(data["lm"])], "mmu": [str(data["mmu"])], "resolution": 64,
                 "max_text_len": 16, "max_seq_len": 24, "shuffle_buffer": 8},
        "train": {"batch_size_t2i": 2, "batch_size_lm": 2, "batch_size_mmu": 2, "learning_rate": 3e-3,
                  "lr_scheduler": "constant", "max_steps": 6, **train},
        "checkpoints": {"every": 1000, "keep": 2}, "log": {"trackers": [], "every": 1000},
    }


def run(cfg: dict, **kwargs):
    from canvaslab.train.unified import train_unified

    return train_unified(validate_config(cfg), **kwargs)


def test_a_few_steps_train_every_kind_and_export_a_loadable_folder(base, data, tmp_path):
    report = run(config(base, data, tmp_path / "run", max_steps=30))
    assert report.steps == 30 and all(np.isfinite(report.losses))
    assert set(report.parts[0]) == {"t2i", "lm", "mmu", "mask_ratio"}
    first = np.mean([p["lm"] + p["mmu"] for p in report.parts[:5]])
    last = np.mean([p["lm"] + p["mmu"] for p in report.parts[-5:]])
    assert last < 0.7 * first, (first, last)
    from canvaslab.engines.unified.bundle import load_bundle

    bundle = load_bundle(report.export)
    assert bundle.config.num_vq_tokens == 16 and (Path(report.export) / "magvit" / "config.json").is_file()


def test_stopping_and_resuming_continues_exactly(base, data, tmp_path):
    sections = dict(max_steps=6, gradient_accumulation=2)
    cfg = config(base, data, tmp_path / "whole", **sections)
    cfg["checkpoints"]["every"] = 3
    whole = run(cfg)
    parts = {**cfg, "output": str(tmp_path / "parts")}
    first = run(parts, stop_after=3)
    assert first.losses == whole.losses[:3]
    second = run({**parts, "resume": "latest"})
    assert second.resumed_from.endswith("step_000003")
    assert second.losses == whole.losses[3:]


def test_gradient_checkpointing_gives_the_same_losses_and_uses_no_deprecated_call(base, data, tmp_path):
    import warnings

    plain = run(config(base, data, tmp_path / "plain", max_steps=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5 deprecates gradient_checkpointing_enable
        checkpointed = run(config(base, data, tmp_path / "checkpointed", max_steps=2, gradient_checkpointing=True))
    np.testing.assert_allclose(checkpointed.losses, plain.losses, rtol=1e-6)


def test_validation_renders_prompts_and_answers(base, data, tmp_path):
    image = tmp_path / "q.png"
    from PIL import Image

    Image.fromarray(_square("red")).save(image)
    cfg = config(base, data, tmp_path / "run", max_steps=2)
    cfg["validation"] = {"prompts": ["a red square", "a blue square"], "images": [str(image)], "steps": 2,
                         "max_new_tokens": 4}
    report = run(cfg)
    names = sorted(Path(p).name for p in report.validations)
    assert names == ["step_000002-answers.txt", "step_000002.png"]
    assert str(image) in (tmp_path / "run" / "validation" / "step_000002-answers.txt").read_text()


def test_batch_size_without_a_source_is_refused():
    from canvaslab.errors import InputError

    with pytest.raises(InputError, match="data.mmu names no parquet source"):
        validate_config({"objective": "unified", "data": {"t2i": ["x.parquet"]}, "train": {"batch_size_mmu": 2, "batch_size_lm": 0}})


@pytest.mark.slow
def test_two_processes_train_on_disjoint_rows(base, data, tmp_path):
    """16 rows per kind in 4 row groups, 2 processes x 4 steps x 2 rows per kind: together the processes
    read every row exactly once (one epoch), each its own half, and train one model."""
    out = tmp_path / "run"
    shipped = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "2cpu-gloo.yaml"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(shipped), "-m", "canvaslab"]
    args = ["train", "unified", f"model.base={base}", f"data.t2i=[{data['t2i']}]", f"data.lm=[{data['lm']}]",
            f"data.mmu=[{data['mmu']}]", "data.resolution=64", "data.max_text_len=16", "data.max_seq_len=24",
            "data.shuffle_buffer=8", "train.batch_size_t2i=2", "train.batch_size_lm=2", "train.batch_size_mmu=2",
            "train.max_steps=4", "log.samples=true", "log.trackers=[]", f"output={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(launcher + args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [(out / "logs" / f"samples_rank{rank}.txt").read_text().split("\n")[:-1] for rank in (0, 1)]
    for kind in ("t2i", "lm", "mmu"):
        rows = [[line.split(" ")[1] for line in lines if line.startswith(f"{kind} ")] for lines in seen]
        assert len(rows[0]) == len(rows[1]) == 8, (kind, rows)
        assert sorted(rows[0] + rows[1]) == [f"{kind}{i:02d}" for i in range(16)], (kind, rows)
    from canvaslab.engines.unified.bundle import load_bundle

    assert load_bundle(out / "final").config.num_vq_tokens == 16


def test_sigterm_saves_a_checkpoint_and_resume_continues_exactly(base, data, tmp_path):
    """A real SIGTERM during training: the step finishes, a checkpoint is saved, the run stops; resuming from
    it gives the losses of an unbroken run, bit for bit."""
    import signal

    cfg = config(base, data, tmp_path / "whole", max_steps=5, gradient_accumulation=2)
    cfg["log"]["every"] = 1
    whole = run(cfg)
    parts = {**cfg, "output": str(tmp_path / "parts")}

    def terminate_at_step_2(line: str) -> None:
        if line.startswith("step 2/"):
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    stopped = run(parts, report=terminate_at_step_2)
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    assert stopped.stopped_by == "SIGTERM" and stopped.steps == 2 and stopped.export is None
    assert stopped.checkpoints[-1].endswith("step_000002")
    assert (Path(stopped.checkpoints[-1]) / "trainer_state.json").is_file()
    assert stopped.losses == whole.losses[:2]
    resumed = run({**parts, "resume": "latest"})
    assert resumed.resumed_from.endswith("step_000002") and resumed.losses == whole.losses[2:]


def test_checkpoints_load_as_models_like_the_export(base, data, tmp_path):
    from canvaslab.engines.unified.bundle import load_bundle

    report = run(config(base, data, tmp_path / "run", max_steps=2))
    checkpoint = load_bundle(report.checkpoints[-1])
    final = load_bundle(report.export)
    ids = torch.randint(0, 60, (1, 12))
    assert torch.equal(checkpoint.model(ids), final.model(ids))


def test_an_unreadable_row_image_is_one_clear_error():
    from canvaslab.errors import InputError
    from canvaslab.train.unified import image_tensor

    with pytest.raises(InputError, match="image .*not an image|unreadable|cannot") as info:
        image_tensor(b"not an image at all", 64)
    assert "\n" not in str(info.value)
    square = image_tensor({"bytes": _png(_square("red", 96)), "path": None}, 64)
    assert square.shape == (3, 64, 64) and -1 <= square.min() and square.max() <= 1
