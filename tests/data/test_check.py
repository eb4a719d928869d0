"""data check: each kind of problem is found in a deliberately broken dataset, and the CLI's exit codes."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from canvaslab.cli.main import app
from canvaslab.data.check import check_dataset
from canvaslab.errors import InputError
from conftest import write_png


def image(width=32, height=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def found(report):
    return {(p.severity, p.kind, p.key) for p in report.problems}


@pytest.fixture()
def broken_edit(tmp_path):
    root = tmp_path / "edit"
    write_png(root / "input" / "lonely.png", image())  # no edited image
    write_png(root / "edited" / "orphan.png", image())  # no input image
    write_png(root / "input" / "mismatch.png", image(32, 32))
    write_png(root / "edited" / "mismatch.png", image(32, 24))
    write_png(root / "input" / "silent.png", image())
    write_png(root / "edited" / "silent.png", image())  # no instruction
    rgba = np.dstack([image(), np.full((32, 32), 200, np.uint8)])
    Image.fromarray(rgba).save(root / "input" / "rgba.png")
    write_png(root / "edited" / "rgba.png", image())
    for stem in ("mismatch", "rgba"):
        (root / "edited" / f"{stem}.txt").write_text("do it")
    return root


def test_edit_problems_are_all_reported(broken_edit):
    report = check_dataset(broken_edit, "edit", resolution=16)
    assert found(report) == {
        ("error", "missing-pair", "input/lonely.png"),
        ("error", "missing-pair", "edited/orphan.png"),
        ("error", "size-mismatch", "mismatch.png"),
        ("warning", "empty-caption", "silent.png"),
        ("note", "mode", "rgba.png"),
    }
    assert not report.ok and report.items == 3 and report.counts() == {"error": 3, "warning": 1, "note": 1}
    assert "RGBA: alpha dropped" in next(p.message for p in report.problems if p.kind == "mode")


def test_inpaint_problems_are_all_reported(tmp_path):
    write_png(tmp_path / "good.png", image(40, 20))
    write_png(tmp_path / "masks" / "good.png", np.ones((10, 20), bool))  # half size: resized
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    write_png(tmp_path / "blank.png", image())
    write_png(tmp_path / "blank_mask.png", np.zeros((32, 32), bool))
    write_png(tmp_path / "masks" / "nobody.png", np.ones((8, 8), bool))
    Image.fromarray(image()[..., 0]).save(tmp_path / "gray.png")
    report = check_dataset(tmp_path, "inpaint", resolution=30)
    assert found(report) == {
        ("error", "missing-pair", "masks/nobody.png"),
        ("error", "unreadable", "broken.png"),
        ("note", "mask-resized", "good.png"),
        ("warning", "small", "good.png"),  # 40x20 < 30 on the short side
        ("warning", "empty-mask", "blank.png"),
        ("note", "mode", "gray.png"),
    } | {("warning", "empty-caption", key) for key in ("good.png", "blank.png", "gray.png")}


def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_frame_counts_and_duplicate_keys_in_tables(tmp_path):
    frame = png(image(16, 16))
    table = pa.table(
        {
            "key": ["a", "b", "a", "c"],
            "instruction": ["x", "x", "x", ""],
            "frames": [[frame] * 2, [frame] * 3, [frame] * 2, [frame, png(image(16, 8))]],
            "target": [frame, frame, frame, frame],
        }
    )
    pq.write_table(table, tmp_path / "f.parquet")
    report = check_dataset(tmp_path / "f.parquet", resolution=8)  # kind guessed from the columns
    assert report.kind == "frames" and report.frames == 2
    assert found(report) == {
        ("error", "frame-count", "b"),
        ("error", "size-mismatch", "c"),
        ("error", "duplicate-key", "a"),
    }


def test_clean_dataset_is_ok(tmp_path):
    write_png(tmp_path / "a.png", image())
    (tmp_path / "a.txt").write_text("a caption")
    report = check_dataset(tmp_path, "inpaint", resolution=32)
    assert report.ok and report.problems == []


# --- the command ------------------------------------------------------------------------------


def test_cli_exits_1_on_errors_and_lists_them(broken_edit):
    result = CliRunner().invoke(app, ["data", "check", str(broken_edit), "--resolution", "16"])
    assert result.exit_code == 1
    for text in ("missing-pair", "size-mismatch", "empty-caption", "3 error(s), 1 warning(s), 1 note(s)"):
        assert text in result.stdout


def test_cli_exits_0_with_warnings_only(tmp_path):
    write_png(tmp_path / "a.png", image())
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path)])  # 32 px < 512: a warning
    assert result.exit_code == 0, result.output
    assert "small" in result.stdout and "ok" in result.stdout


def test_cli_json_report(broken_edit):
    result = CliRunner().invoke(app, ["--json", "data", "check", str(broken_edit), "--kind", "edit"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["kind"] == "edit" and report["counts"]["error"] == 3
    assert {p["kind"] for p in report["problems"]} >= {"missing-pair", "size-mismatch", "small"}


def test_cli_column_option_maps_table_columns(tmp_path):
    pq.write_table(pa.table({"pic": [png(image())], "prompt": ["p"]}), tmp_path / "t.parquet")
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "check", str(tmp_path / "t.parquet"), "--column", "image=pic", "--column", "caption=prompt", "--resolution", "8"])
    assert ok.exit_code == 0, ok.output
    missing = runner.invoke(app, ["data", "check", str(tmp_path / "t.parquet")])
    assert missing.exit_code == 2 and "--column image=NAME" in missing.stderr
    malformed = runner.invoke(app, ["data", "check", str(tmp_path / "t.parquet"), "--column", "image"])
    assert malformed.exit_code == 2 and "ROLE=NAME" in malformed.stderr


def test_cli_unopenable_source_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: dataset {tmp_path / 'nope'} does not exist: pass a folder, a .parquet/.arrow/.jsonl file or a glob"]


# --- unified rows (canvaslab train unified) ---------------------------------------------------


def test_unified_data_written_by_data_mini_checks_clean(tmp_path):
    from canvaslab.data.mini import write_mini

    write_mini(tmp_path / "out", kind="unified", count=4, size=32)
    folder = tmp_path / "out" / "unified"
    report = check_dataset(folder, "unified", resolution=32)
    assert report.ok and report.problems == [], report.problems
    assert report.kind == "unified" and report.items == 12 and report.rows == {"t2i": 4, "lm": 4, "mmu": 4}
    guessed = check_dataset(folder, resolution=32)  # lm and mmu tables are no other kind's
    assert guessed.kind == "unified" and guessed.rows == report.rows
    alone = check_dataset(folder / "lm.parquet", resolution=32)
    assert alone.kind == "unified" and alone.rows == {"lm": 4} and alone.ok


def test_unified_row_problems_are_all_reported(tmp_path):
    gray = np.asarray(Image.fromarray(image(40, 40)).convert("L"))
    pq.write_table(pa.table({
        "key": ["ok", "broken", "silent", "gray", "tiny", "ok"],
        "image": [png(image(40, 40)), b"not an image", png(image(40, 40)), png(gray), png(image(40, 20)),
                  png(image(40, 40))],
        "caption": ["a cat", "x", "", "x", "x", "a cat"],
        "class_name": ["cat", "x", None, "x", "x", "cat"],
    }), tmp_path / "t2i.parquet")
    pq.write_table(pa.table({"key": ["a", "b"], "text": ["some text.", "  "]}), tmp_path / "lm.parquet")
    pq.write_table(pa.table({"key": ["q", "none"], "image": [png(image(40, 40)), None], "question": ["what?", "what?"],
                             "answer": ["a cat", ""]}), tmp_path / "mmu.parquet")
    report = check_dataset(tmp_path, "unified", resolution=32)
    assert found(report) == {
        ("error", "unreadable", "t2i:broken"),
        ("warning", "empty-caption", "t2i:silent"),
        ("note", "mode", "t2i:gray"),
        ("warning", "small", "t2i:tiny"),
        ("warning", "duplicate-key", "t2i:ok"),
        ("warning", "empty-text", "lm:b"),
        ("error", "missing-pair", "mmu:none"),
        ("warning", "empty-text", "mmu:none"),
    }
    assert report.rows == {"t2i": 6, "lm": 2, "mmu": 2} and not report.ok


def test_unified_columns_can_be_renamed_and_other_tables_are_refused(tmp_path):
    pq.write_table(pa.table({"content": ["web text."]}), tmp_path / "web.parquet")  # RefinedWeb's column name
    report = check_dataset(tmp_path / "web.parquet", "unified", columns={"text": "content"}, resolution=8)
    assert report.ok and report.rows == {"lm": 1}
    with pytest.raises(InputError, match=r"web.parquet has columns \['content'\]: not a t2i .*--column") as info:
        check_dataset(tmp_path / "web.parquet", "unified", resolution=8)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="unknown column role 'mask'"):
        check_dataset(tmp_path / "web.parquet", "unified", columns={"mask": "m"})


def test_cli_checks_unified_data(tmp_path):
    from canvaslab.data.mini import write_mini

    write_mini(tmp_path / "out", kind="unified", count=2, size=16)
    folder = str(tmp_path / "out" / "unified")
    result = CliRunner().invoke(app, ["data", "check", folder, "--kind", "unified", "--resolution", "16"])
    assert result.exit_code == 0, result.output
    assert "6 unified rows (t2i 2, lm 2, mmu 2): 0 error(s), 0 warning(s), 0 note(s)" in " ".join(result.stdout.split())
    as_json = CliRunner().invoke(app, ["--json", "data", "check", folder, "--resolution", "64"])
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == 0 and report["kind"] == "unified" and report["rows"] == {"t2i": 2, "lm": 2, "mmu": 2}
    assert {p["kind"] for p in report["problems"]} == {"small"}
