"""`canvaslab eval run`: make (or find) an output for every case of a protocol, score it, write run.json.

A run keeps its work in a folder (by default beside run.json, named after it):

```
run/outputs/<id>.png    the system's outputs (an engine's, written like batch outputs: atomically)
run/scores/<id>.json    each case's numbers, with the sha256 of the output they were computed from
run/features/<id>.npz   what set-level metrics need (Inception features of output and reference)
```

so a run resumes like a batch (existing outputs are not made again, existing scores of unchanged
outputs are not computed again) and shards like one: under `accelerate launch` / torchrun (RANK,
WORLD_SIZE) or with `shard=(i, n)` each process takes cases i, i+n, ... The process that finds every
case scored (the last shard to finish, or any rerun) computes the set-level metrics from the stored
features and writes run.json; the others say how many cases are still missing.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from canvaslab.core.image import atomic_write_bytes
from canvaslab.errors import CanvaslabError, InputError
from canvaslab.eval.metrics import Metric, Sample, Weights, directions, load_metrics
from canvaslab.eval.protocols import Case, Manifest

FORMAT = 1  # run.json layout version
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CHUNK = 16  # cases decoded and scored together

Progress = Callable[[str, str, str], None]  # (stage, case id, status)


@dataclass
class RunSpec:
    """What to run and how; exactly one of `request` (an engine run) and `predictions` (another tool's
    outputs, `<predictions>/<case id>.<png|jpg|webp>`)."""

    manifest: Manifest
    output: Path  # run.json
    metrics: list[str] = field(default_factory=lambda: ["pixels"])
    request: Any = None  # a validated InpaintRequest / EditRequest
    predictions: Path | None = None
    work: Path | None = None
    label: str | None = None
    weights: Weights = field(default_factory=Weights)
    workers: int = 1
    shard: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        if (self.request is None) == (self.predictions is None):
            raise InputError("give an engine to run (--engine/--model) or --predictions DIR, not both and not neither")
        if self.predictions is not None and not self.predictions.is_dir():
            raise InputError(f"--predictions {self.predictions} is not a folder")
        if self.work is None:
            self.work = self.output.with_suffix("")
            if self.work == self.output:
                self.work = self.output.with_name(self.output.name + ".work")

    @property
    def folder(self) -> Path:
        assert self.work is not None
        return self.work


@dataclass
class RunResult:
    path: Path | None  # run.json, when this process wrote it
    done: int  # cases scored by this process (computed or reused)
    failed: list[tuple[str, str]]
    missing: int  # cases of other shards not scored yet
    record: dict[str, Any] | None = None


# --- step 2: outputs --------------------------------------------------------------------------------


def output_path(spec: RunSpec, case: Case) -> Path:
    return spec.folder / "outputs" / f"{case.id}.png"


def find_prediction(folder: Path, case: Case) -> Path | None:
    for suffix in SUFFIXES:
        path = folder / f"{case.id}{suffix}"
        if path.is_file():
            return path
    return None


def make_outputs(spec: RunSpec, cases: list[Case], progress: Progress) -> tuple[dict[str, Path], dict[str, str], dict[str, float]]:
    """(case id -> output file, case id -> failure, case id -> seconds for outputs made now)."""
    if spec.predictions is not None:
        found, failed = {}, {}
        for case in cases:
            path = find_prediction(spec.predictions, case)
            if path is None:
                failed[case.id] = f"no prediction {case.id}.png (or .jpg/.webp) in {spec.predictions}"
            else:
                found[case.id] = path
        return found, failed, {}
    if spec.manifest.task == "edit":
        return _run_edits(spec, cases, progress)
    return _run_inpaints(spec, cases, progress)


def _run_inpaints(spec: RunSpec, cases: list[Case], progress: Progress) -> tuple[dict, dict, dict]:
    from canvaslab.tasks.batch import BatchItem, process_item, run_batch
    from canvaslab.tasks.render import OutputSpec

    items = [BatchItem(case.id, spec.manifest.file(case.input), spec.manifest.file(case.mask), output_path(spec, case))  # type: ignore[arg-type]
             for case in cases]
    seconds: dict[str, float] = {}
    first = next((item for item in items if not item.output.exists()), None)
    if first is not None:
        # 2.1 the first case alone, here: a system that cannot run at all (a missing model, a refused
        # option) stops the run with its one-line error instead of failing every case the same way
        started = time.perf_counter()
        process_item(first, task="inpaint", request=spec.request.model_dump(mode="json"), spec=OutputSpec())
        seconds[first.key] = time.perf_counter() - started  # reported below, as skipped by the batch
    clock = [time.perf_counter()]

    def advance(item: BatchItem, status: str) -> None:
        now = time.perf_counter()
        if status == "done" and spec.workers <= 1:  # one at a time: the gap is this item's time
            seconds[item.key] = now - clock[0]
        clock[0] = now
        progress("generate", item.key, status)

    report = run_batch(items, "inpaint", spec.request.model_dump(mode="json"), OutputSpec(), workers=spec.workers,
                       on_progress=advance)
    failed = {item.key: why for item, why in report.failed}
    made = {item.key: item.output for item in items if item.key not in failed and item.output.exists()}
    return made, failed, seconds


def _run_edits(spec: RunSpec, cases: list[Case], progress: Progress) -> tuple[dict, dict, dict]:
    """Edits one by one (each case has its own instruction), skipping outputs that exist."""
    from canvaslab.tasks.render import OutputSpec, render

    made, failed, seconds = {}, {}, {}
    for case in cases:
        target = output_path(spec, case)
        if target.exists():
            made[case.id] = target
            progress("generate", case.id, "skipped")
            continue
        started = time.perf_counter()
        try:
            request = spec.request.model_copy(update={"prompt": case.instruction})
            render("edit", spec.manifest.file(case.input), None, request, target, OutputSpec())
        except CanvaslabError as exc:
            if not made and not failed:
                raise  # the first case: a system that cannot run at all stops here, in one line
            failed[case.id] = str(exc)
            progress("generate", case.id, "failed")
            continue
        seconds[case.id] = time.perf_counter() - started
        made[case.id] = target
        progress("generate", case.id, "done")
    return made, failed, seconds


# --- step 3: scores ---------------------------------------------------------------------------------


def read_rgb(path: Path) -> np.ndarray:
    """Any 8/16-bit image as HxWx3 uint8 RGB (alpha dropped); OpenCV decodes without holding the GIL."""
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot read the image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_hole(path: Path) -> np.ndarray:
    mask = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise InputError(f"cannot read the mask {path}")
    return mask >= 128


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metrics_key(spec: RunSpec) -> str:
    return ",".join(sorted(spec.metrics))


def _load_sample(spec: RunSpec, case: Case, output: Path, need_input: bool) -> Sample:
    m = spec.manifest
    reference = read_rgb(m.file(case.reference)) if case.reference else None  # type: ignore[arg-type]
    sample = Sample(case.id, read_rgb(output), reference, read_hole(m.file(case.mask)) if case.mask else None,  # type: ignore[arg-type]
                    read_rgb(m.file(case.input)) if need_input else None,  # type: ignore[arg-type]
                    case.instruction or (getattr(spec.request, "prompt", "") or ""), case.input_caption, case.output_caption)
    if reference is not None and sample.output.shape != reference.shape:
        raise InputError(f"the output is {sample.output.shape[1]}x{sample.output.shape[0]}, the reference "
                         f"{reference.shape[1]}x{reference.shape[0]}: outputs must keep the input's size")
    return sample


def _score_file(spec: RunSpec, case_id: str) -> Path:
    return spec.folder / "scores" / f"{case_id}.json"


def _feature_file(spec: RunSpec, case_id: str) -> Path:
    return spec.folder / "features" / f"{case_id}.npz"


def _read_score(spec: RunSpec, case_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(_score_file(spec, case_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_score(spec: RunSpec, case_id: str, record: dict[str, Any], features: dict[str, np.ndarray]) -> None:
    if features:  # first, and synced: a score on disk means its features are
        buffer = io.BytesIO()
        np.savez(buffer, **features)
        atomic_write_bytes(_feature_file(spec, case_id), buffer.getvalue())
    _replace_unsynced(_score_file(spec, case_id), json.dumps(record).encode("utf-8"))


def _replace_unsynced(path: Path, data: bytes) -> None:
    """Write by rename, without fsync (a thousand fsyncs were a third of scoring 1,000 cases): a
    crash can leave a score file empty or torn, which reads as missing and is computed again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InputError(f"cannot write '{path}': {exc.strerror or exc}") from None


def score_cases(spec: RunSpec, metrics: list[Metric], cases: list[Case], outputs: dict[str, Path],
                seconds: dict[str, float], progress: Progress) -> tuple[int, dict[str, str]]:
    """Score every case with an output whose stored score is missing or stale; (scored, failures)."""
    key = _metrics_key(spec)
    need_input = any(m.needs_input for m in metrics)
    todo: list[tuple[Case, Path, str]] = []
    done = 0
    for case in cases:
        if case.id not in outputs:
            continue
        sha = file_sha256(outputs[case.id])
        old = _read_score(spec, case.id)
        if old is not None and old.get("output_sha256") == sha and old.get("metrics") == key and "error" not in old:
            done += 1
            progress("score", case.id, "skipped")
        else:
            todo.append((case, outputs[case.id], sha))
    failed: dict[str, str] = {}
    chunks = [todo[start : start + CHUNK] for start in range(0, len(todo), CHUNK)]
    with ThreadPoolExecutor(max(2, spec.workers)) as pool:

        def read(chunk: list[tuple[Case, Path, str]]) -> list[Any]:
            return [pool.submit(_try, lambda job=job: _load_sample(spec, job[0], job[1], need_input)) for job in chunk]

        pending = read(chunks[0]) if chunks else []
        for number, chunk in enumerate(chunks):
            loaded = [future.result() for future in pending]
            pending = read(chunks[number + 1]) if number + 1 < len(chunks) else []  # decoded while this one is scored
            ready = [(job, sample) for job, sample in zip(chunk, loaded) if isinstance(sample, Sample)]
            for job, error in zip(chunk, loaded):
                if not isinstance(error, Sample):
                    failed[job[0].id] = str(error)
                    _write_score(spec, job[0].id, {"id": job[0].id, "error": str(error)}, {})
                    progress("score", job[0].id, "failed")
            rows: list[dict[str, Any]] = [{} for _ in ready]
            for metric in metrics:
                for row, values in zip(rows, metric.score([sample for _, sample in ready])):
                    row.update(values)
            for ((case, output, sha), _), row in zip(ready, rows):
                values = {k: float(v) for k, v in row.items() if not isinstance(v, np.ndarray)}
                features = {k: v for k, v in row.items() if isinstance(v, np.ndarray)}
                record = {"id": case.id, "output": str(output), "output_sha256": sha, "metrics": key,
                          "seconds": seconds.get(case.id), "values": values}
                old = _read_score(spec, case.id)
                if record["seconds"] is None and old and old.get("output_sha256") == sha:
                    record["seconds"] = old.get("seconds")  # rescored (new metrics): keep the time it took
                _write_score(spec, case.id, record, features)
                done += 1
                progress("score", case.id, "done")
    return done, failed


def _try(function: Callable[[], Any]) -> Any:
    try:
        return function()
    except CanvaslabError as exc:
        return exc


# --- step 4: the run record --------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0, "n": len(array)}


def assemble(spec: RunSpec, metrics: list[Metric]) -> dict[str, Any] | None:
    """The run record, when every case has a score (else None: other shards are still working)."""
    from canvaslab import __version__

    records = {case.id: _read_score(spec, case.id) for case in spec.manifest.cases}
    if any(r is None for r in records.values()):
        return None
    key = _metrics_key(spec)
    if any("error" not in r and r.get("metrics") != key for r in records.values()):  # type: ignore[union-attr]
        return None  # another shard still scores with other metrics; its rerun assembles
    cases, failed = [], []
    features: dict[str, list[np.ndarray]] = {}
    for case in spec.manifest.cases:
        record = records[case.id]
        assert record is not None
        if "error" in record:
            failed.append({"id": case.id, "error": record["error"]})
            continue
        cases.append({"id": case.id, "hole": case.hole, "output": record["output"], "seconds": record.get("seconds"),
                      **record["values"]})
        if _feature_file(spec, case.id).exists():
            with np.load(_feature_file(spec, case.id)) as stored:
                for name in stored.files:
                    features.setdefault(name, []).append(stored[name])
    columns = directions(metrics)
    summary = {}
    for column in columns:
        values = [c[column] for c in cases if c.get(column) is not None]
        if values:
            summary[column] = _stats(values)
    set_values: dict[str, float] = {}
    stacked = {name: np.stack(arrays) for name, arrays in features.items() if len(arrays) == len(cases)}
    for metric in metrics:
        set_values.update(metric.finish(stacked))
    times = [c["seconds"] for c in cases if c.get("seconds") is not None]
    return {
        "canvaslab_eval": FORMAT,
        "canvaslab": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "label": spec.label or default_label(spec),
        "protocol": {"name": spec.manifest.name, "task": spec.manifest.task, "path": str(spec.manifest.path.resolve()),
                     "sha256": spec.manifest.sha256, "cases": len(spec.manifest.cases), "seed": spec.manifest.seed,
                     "params": spec.manifest.params},
        "system": describe_system(spec),
        "metrics": spec.metrics,
        "columns": {column: better for column, better in columns.items() if column in summary or column in set_values},
        "ideal": {k: v for m in metrics for k, v in m.ideal.items()},
        "summary": summary,
        "set": set_values,
        "seconds": _stats(times) if times else None,
        "failed": failed,
        "cases": cases,
    }


def default_label(spec: RunSpec) -> str:
    if spec.predictions is not None:
        return spec.predictions.name
    request = spec.request
    label = request.engine if request.engine != "diffusion" or not request.model else ""
    if request.model:
        from canvaslab.tasks.requests import display_name

        label = f"{label} {display_name(request.model)}".strip()
    return label


def describe_system(spec: RunSpec) -> dict[str, Any]:
    if spec.predictions is not None:
        return {"predictions": str(spec.predictions.resolve())}
    request = spec.request.model_dump(mode="json")
    if spec.manifest.task == "edit":
        request.pop("prompt", None)  # each case has its own instruction
    return {"engine": spec.request.engine, "model": spec.request.model, "request": request}


def run_eval(spec: RunSpec, progress: Progress | None = None) -> RunResult:
    """1 load the metrics (weights fail now, before any work), 2 outputs, 3 scores, 4 run.json."""
    progress = progress or (lambda stage, case_id, status: None)
    # 1. metrics first: a missing weight file should not cost a whole generation pass
    metrics = load_metrics(spec.metrics, spec.weights)
    index, count = spec.shard
    if not 0 <= index < count:
        raise InputError(f"shard index {index} is outside 0..{count - 1}")
    cases = spec.manifest.cases[index::count]
    # 2. outputs
    outputs, failed, seconds = make_outputs(spec, cases, progress)
    for case_id, why in failed.items():
        _write_score(spec, case_id, {"id": case_id, "error": why}, {})
    # 3. scores
    done, score_failures = score_cases(spec, metrics, cases, outputs, seconds, progress)
    failed.update(score_failures)
    # 4. the record, once every shard is done
    record = assemble(spec, metrics)
    if record is None:
        missing = sum(1 for case in spec.manifest.cases if _read_score(spec, case.id) is None)
        return RunResult(None, done, sorted(failed.items()), missing)
    text = json.dumps(_finite(record), indent=1, allow_nan=False) + "\n"
    atomic_write_bytes(spec.output, text.encode("utf-8"))
    return RunResult(spec.output, done, sorted(failed.items()), 0, record)


def _finite(value: Any) -> Any:
    """NaN and infinities (a metric undefined on some case) become null: JSON has no such numbers."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def load_run(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise InputError(f"{path} is not JSON: is it a run.json written by `canvaslab eval run`?") from None
    if not isinstance(record, dict) or record.get("canvaslab_eval") != FORMAT:
        raise InputError(f"{path} is not a canvaslab eval run (format {FORMAT})")
    record["_path"] = str(path)
    return record


def device_for_rank() -> str:
    """cuda:LOCAL_RANK when CUDA is there (one GPU per process under accelerate), else cpu."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
