"""`canvaslab eval protocol|run|compare|report` through the CLI: resumable runs, other tools' outputs,
learned metrics from a weights folder, paired comparisons and the HTML page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from canvaslab.cli.main import app
from canvaslab.eval.metrics.pixels import hole_metrics


def cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def cli_json(*args: object) -> dict:
    code, out, err = cli("--json", *args)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def protocol(photos, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("protocol") / "thin"
    code, out, err = cli("eval", "protocol", "lama-thin-256", "--data", photos, "-o", folder, "--per-image", "2", "--seed", "1")
    assert code == 0, err
    assert Path(out.strip()) == folder / "protocol.json" and "6 cases" in err
    return folder


@pytest.fixture(scope="module")
def telea_run(protocol, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "telea.json"
    cli_json("eval", "run", "-p", protocol, "--engine", "telea", "-o", run)
    return run


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _record(path: Path) -> dict:
    return json.loads(path.read_text())


def test_run_scores_every_case_as_the_metric_says(protocol, telea_run):
    record = _record(telea_run)
    assert record["label"] == "telea" and record["protocol"]["cases"] == 6 and not record["failed"]
    assert record["system"]["engine"] == "telea" and record["protocol"]["name"] == "lama-thin-256"
    for case in record["cases"]:
        reference = _read(protocol / "references" / f"{case['id']}.png")
        hole = _read(protocol / "masks" / f"{case['id']}.png")[..., 0] > 127
        expected = hole_metrics(_read(Path(case["output"])), reference, hole)
        assert {k: case[k] for k in expected} == pytest.approx(expected, rel=1e-9)
        assert case["outside_changed"] == 0.0  # canvaslab's composite: bit-identical outside the mask
    psnr = [c["psnr_hole"] for c in record["cases"]]
    assert record["summary"]["psnr_hole"]["mean"] == pytest.approx(np.mean(psnr))


def test_run_resumes_only_what_is_missing(protocol, telea_run, tmp_path):
    run = tmp_path / "again.json"
    shutil.copytree(telea_run.with_suffix(""), tmp_path / "again")
    outputs = sorted((tmp_path / "again" / "outputs").glob("*.png"))
    stamps = {p.name: p.stat().st_mtime_ns for p in outputs}
    outputs[0].unlink()  # as if killed before this case was made
    (tmp_path / "again" / "scores" / outputs[1].with_suffix(".json").name).unlink()
    result = cli_json("eval", "run", "-p", protocol, "--engine", "telea", "-o", run)
    assert result["scored"] == 6 and result["missing"] == 0
    assert outputs[0].exists() and outputs[0].stat().st_mtime_ns != stamps[outputs[0].name]
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in outputs[1:])  # made once, never again
    before, after = _record(telea_run), _record(run)
    strip = lambda cases: [{k: v for k, v in c.items() if k not in ("output", "seconds")} for c in cases]  # noqa: E731
    assert strip(after["cases"]) == strip(before["cases"])  # telea is deterministic: same numbers


def test_shards_write_the_record_when_the_last_one_finishes(protocol, tmp_path):
    run = tmp_path / "sharded.json"
    first = cli_json("eval", "run", "-p", protocol, "--engine", "telea", "-o", run, "--shard", "0/2")
    assert first["run"] is None and first["missing"] == 3 and not run.exists()
    second = cli_json("eval", "run", "-p", protocol, "--engine", "telea", "-o", run, "--shard", "1/2")
    assert second["run"] == str(run) and len(_record(run)["cases"]) == 6


def test_launcher_ranks_shard_the_cases(protocol, telea_run, tmp_path, monkeypatch):
    """Under accelerate launch / torchrun each process takes the cases of its RANK of WORLD_SIZE."""
    run = tmp_path / "ranks.json"
    predictions = telea_run.with_suffix("") / "outputs"
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank, missing in (("2", 4), ("0", 2)):
        monkeypatch.setenv("RANK", rank)
        result = cli_json("eval", "run", "-p", protocol, "--predictions", predictions, "-o", run)
        assert result["run"] is None and result["missing"] == missing and result["scored"] == 2
    scored = sorted(p.stem for p in (tmp_path / "ranks" / "scores").iterdir())
    ids = [c["id"] for c in _record(telea_run)["cases"]]
    assert scored == sorted(ids[0::3] + ids[2::3])
    monkeypatch.setenv("RANK", "1")
    assert cli_json("eval", "run", "-p", protocol, "--predictions", predictions, "-o", run)["run"] == str(run)


def test_predictions_of_another_tool(protocol, telea_run, tmp_path):
    """Outputs made elsewhere: a changed pixel outside the mask is reported, a missing one is a failure."""
    predictions = tmp_path / "theirs"
    shutil.copytree(telea_run.with_suffix("") / "outputs", predictions)
    ids = sorted(p.stem for p in predictions.iterdir())
    changed = _read(predictions / f"{ids[0]}.png").copy()
    hole = _read(protocol / "masks" / f"{ids[0]}.png")[..., 0] > 127
    ys, xs = np.nonzero(~hole)
    changed[ys[:10], xs[:10]] ^= 4
    Image.fromarray(changed).save(predictions / f"{ids[0]}.jpg", quality=100)  # any format, by case id
    (predictions / f"{ids[0]}.png").unlink()
    (predictions / f"{ids[1]}.png").unlink()
    run = tmp_path / "theirs.json"
    code, out, err = cli("eval", "run", "-p", protocol, "--predictions", predictions, "-o", run)
    assert code == 1 and f"failed {ids[1]}: no prediction {ids[1]}.png" in err
    record = _record(run)
    assert record["label"] == "theirs" and record["failed"] == [{"id": ids[1], "error": record["failed"][0]["error"]}]
    by_id = {c["id"]: c for c in record["cases"]}
    assert by_id[ids[0]]["outside_changed"] > 0 and ids[1] not in by_id
    telea = {c["id"]: c for c in _record(telea_run)["cases"]}
    assert by_id[ids[2]]["psnr_hole"] == telea[ids[2]]["psnr_hole"]


def test_learned_metrics_from_a_weights_folder(protocol, telea_run, weights_dir, tmp_path):
    run = tmp_path / "learned.json"
    result = cli_json("eval", "run", "-p", protocol, "--predictions", telea_run.with_suffix("") / "outputs", "-o", run,
                      "--metrics", "pixels,lpips,fid,kid,is,ids", "--weights", weights_dir)
    record = _record(run)
    assert set(result["set"]) == {"fid", "kid", "kid_std", "is", "is_std", "p_ids", "u_ids"}
    assert record["set"]["fid"] > 0 and all(c["lpips"] > 0 for c in record["cases"])
    assert sorted(p.stem for p in (tmp_path / "learned" / "features").iterdir()) == sorted(c["id"] for c in record["cases"])
    # scoring the references themselves: FID of a set with itself
    code, _, err = cli("eval", "run", "-p", protocol, "--predictions", protocol / "references", "-o", tmp_path / "self.json",
                       "--metrics", "fid,lpips", "--weights", weights_dir)
    assert code == 0, err
    same = _record(tmp_path / "self.json")
    assert same["set"]["fid"] == pytest.approx(0.0, abs=1e-6) and all(c["lpips"] == 0.0 for c in same["cases"])


def test_missing_weights_fail_before_any_output_is_made(protocol, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    code, out, err = cli("eval", "run", "-p", protocol, "--engine", "telea", "-o", tmp_path / "r.json",
                         "--metrics", "pixels,lpips", "--weights", empty)
    assert code == 3 and err.count("\n") == 1 and "alexnet-owt-7be5be79.pth" in err and "--weights" in err
    assert not (tmp_path / "r").exists()


def test_a_system_that_cannot_run_stops_at_the_first_case(protocol, tmp_path):
    code, out, err = cli("eval", "run", "-p", protocol, "--engine", "lama", "--model", tmp_path / "missing.ckpt",
                         "-o", tmp_path / "r.json")
    assert code == 3 and err.count("\n") == 1 and "missing.ckpt" in err and "failed" not in err
    assert not (tmp_path / "r.json").exists() and not list((tmp_path / "r").rglob("*.png"))


@pytest.mark.parametrize("args, message", [
    (["--engine", "telea", "--predictions", "."], "drop --engine"),
    (["--metrics", "psnr"], "unknown metric 'psnr'"),
    (["--shard", "3/2"], "shard"),
    (["--prompt", "x", "--set", "seed=3"], "--set seed"),
])
def test_bad_run_options_are_one_line(protocol, tmp_path, args, message):
    code, out, err = cli("eval", "run", "-p", protocol, "-o", tmp_path / "r.json", *args)
    assert code != 0 and message in err and err.strip().count("\n") == 0


@pytest.fixture(scope="module")
def ns_run(protocol, telea_run) -> Path:
    run = telea_run.with_name("ns.json")
    cli_json("eval", "run", "-p", protocol, "--engine", "ns", "-o", run)
    return run


def test_compare_pairs_cases_with_bootstrap_intervals(telea_run, ns_run):
    result = cli_json("eval", "compare", telea_run, ns_run, "--resamples", "500")
    (comparison,) = result["comparisons"]
    assert result["baseline"] == "telea" and comparison["label"] == "ns" and comparison["paired_cases"] == 6
    base = {c["id"]: c for c in _record(telea_run)["cases"]}
    other = {c["id"]: c for c in _record(ns_run)["cases"]}
    diffs = np.array([other[i]["psnr_hole"] - base[i]["psnr_hole"] for i in base])
    psnr = comparison["metrics"]["psnr_hole"]
    assert psnr["diff"] == pytest.approx(diffs.mean()) and psnr["n"] == 6
    assert (psnr["wins"], psnr["ties"], psnr["losses"]) == ((diffs > 0).sum(), (diffs == 0).sum(), (diffs < 0).sum())
    low, high = psnr["ci"]
    assert diffs.min() <= low <= psnr["diff"] <= high <= diffs.max()
    assert psnr["clear"] == (low > 0 or high < 0)
    # lower is better for L1: a win is a smaller error
    l1 = comparison["metrics"]["l1_hole"]
    l1_diffs = np.array([other[i]["l1_hole"] - base[i]["l1_hole"] for i in base])
    assert l1["wins"] == (l1_diffs < 0).sum()
    assert comparison["metrics"]["outside_changed"]["ties"] == 6


def test_compare_refuses_runs_of_other_cases(telea_run, photos, tmp_path):
    other = tmp_path / "box.json"
    cli_json("eval", "run", "-p", "lama-box-256", "--data", photos, "--engine", "telea", "-o", other)
    code, _, err = cli("eval", "compare", telea_run, other)
    assert code == 2 and "compare runs of one protocol" in err and err.count("\n") == 1
    code, _, err = cli("eval", "compare", telea_run)
    assert code == 2 and "at least two runs" in err


def test_report_is_one_self_contained_page(telea_run, ns_run, tmp_path):
    page = tmp_path / "report.html"
    code, out, err = cli("eval", "report", telea_run, ns_run, "-o", page, "--cases", "2")
    assert code == 0, err
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text and "<link" not in text
    assert text.count("data:image/jpeg;base64,") == 4 * 4  # 2 best + 2 worst cases x (hole, reference, 2 runs)
    assert text.count("<svg") >= 4 and ">telea<" in text and ">ns<" in text
    assert "Best and worst cases by PSNR hole" in text
    code, _, err = cli("eval", "report", telea_run, "-o", page, "--metric", "fid")
    assert code == 2 and "--metric 'fid' is not a per-case metric" in err
