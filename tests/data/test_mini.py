"""data mini: every layout written, deterministic per seed, learnable structure, refuses to overwrite."""

import hashlib
import io
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from canvaslab.cli.main import app
from canvaslab.data.datasets import open_dataset
from canvaslab.data.mini import CLASS_NAMES, COLOURS, LAYOUTS, draw_scene, write_mini
from canvaslab.data.streaming import ParquetStream
from canvaslab.errors import InputError


def digest_tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_all_layouts_are_written_and_open(tmp_path):
    written = write_mini(tmp_path / "out", count=3, size=24, frames=2)
    assert [d.layout for d in written] == [layout for layouts in LAYOUTS.values() for layout in layouts]
    for dataset in written:
        if dataset.kind == "unified":  # streamed by the unified trainer, not an open_dataset layout
            assert len(list(ParquetStream(dataset.path))) == 3
            continue
        data = open_dataset(dataset.path, dataset.kind)
        assert len(data) == 3 and data.problems == []
        assert data.frames == {"inpaint": 0, "edit": 1, "frames": 2}[dataset.kind]
        # square, wide, tall in turn, so aspect buckets get used
        assert data.sizes() == [(24, 24), (32, 24), (24, 32)]


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        write_mini(tmp_path / name, kind="edit", count=4, size=16, seed=seed)
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    assert digest_tree(tmp_path / "a") != digest_tree(tmp_path / "c")


def test_captions_name_the_shapes_in_the_picture():
    for seed in range(10):
        image, caption, shapes = draw_scene(np.random.default_rng(seed), 48, 32)
        for shape in shapes:
            assert f"a {shape.colour} {shape.name}" in caption
        left, top, right, bottom = shapes[-1].box  # drawn last, so nothing covers its centre
        assert tuple(image[(top + bottom) // 2, (left + right) // 2]) == COLOURS[shapes[-1].colour]


def test_kind_selects_the_layouts(tmp_path):
    written = write_mini(tmp_path / "out", kind="frames", count=2, size=16, frames=4)
    assert [(d.layout, d.kind) for d in written] == [("frames-parquet", "frames")]
    assert open_dataset(written[0].path, "frames").frames == 4


def test_refuses_a_non_empty_folder_and_bad_options(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists and is not empty"):
        write_mini(tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert write_mini(tmp_path / "empty", kind="inpaint", count=1, size=16)
    for options, message in (({"kind": "video"}, "unknown kind"), ({"count": 0}, "count"), ({"size": 8}, "size")):
        with pytest.raises(InputError, match=message):
            write_mini(tmp_path / "new", **options)


def test_cli_prints_the_dataset_paths(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "mini", str(tmp_path / "out"), "--kind", "edit", "--count", "2", "--size", "16"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(tmp_path / "out" / "edit-jsonl"), str(tmp_path / "out" / "edit-folder"),
                                     str(tmp_path / "out" / "edit-parquet" / "train.parquet")]
    again = runner.invoke(app, ["data", "mini", str(tmp_path / "out")])
    assert again.exit_code == 2 and "already exists and is not empty" in again.stderr
    listed = runner.invoke(app, ["--json", "data", "mini", str(tmp_path / "json"), "--kind", "inpaint", "--count", "1"])
    assert [d["layout"] for d in json.loads(listed.stdout)] == ["inpaint-folder", "inpaint-parquet"]


def test_data_help_does_not_load_pyarrow():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from canvaslab.cli.main import app\n"
        "for args in (['data', '--help'], ['data', 'check', '--help'], ['data', 'mini', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "print(sorted(m for m in ('pyarrow', 'datasets', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def colour_counts(png):
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    names = {rgb: name for name, rgb in COLOURS.items()}
    counts = Counter(names[tuple(int(v) for v in p)] for p in pixels)
    return pixels, counts


def test_unified_rows_describe_their_pictures(tmp_path):
    written = write_mini(tmp_path / "out", kind="unified", count=12, size=32, seed=1)
    assert [(d.layout, d.path.relative_to(tmp_path / "out").as_posix()) for d in written] == [
        ("unified-t2i", "unified/t2i.parquet"), ("unified-lm", "unified/lm.parquet"), ("unified-mmu", "unified/mmu.parquet")]
    t2i, lm, mmu = (list(ParquetStream(d.path, shuffle=False)) for d in written)
    assert len(t2i) == len(lm) == len(mmu) == 12
    assert pq.ParquetFile(written[0].path).num_row_groups == 3, "small row groups, so streams can shard them"
    for row in t2i:
        pixels, counts = colour_counts(row["image"])
        assert pixels.shape[0] == 32 * 32
        colour, shape = row["class_name"].split(" ")
        background = row["caption"].rsplit(" on a ", 1)[1].removesuffix(" background")
        assert CLASS_NAMES[row["label"]] == row["class_name"] and row["caption"].startswith(f"a {row['class_name']} on a ")
        assert counts.most_common(1)[0][0] == background and counts[colour] >= 32 * 32 // 20
    features = json.loads(pq.read_schema(written[0].path).metadata[b"huggingface"])["info"]["features"]
    assert features["label"]["names"] == list(CLASS_NAMES)
    for row in lm:
        assert row["text"].startswith("the ") and "corners" in row["text"]
    for row in mmu:
        _, counts = colour_counts(row["image"])
        if row["question"] == "what colour is the background?":
            assert counts.most_common(1)[0][0] == row["answer"]
        if row["question"] == "what colour is the shape?":
            assert len(counts) == 2 and counts.most_common()[1][0] == row["answer"]
    assert {row["question"] for row in mmu} > {"what colour is the shape?"}, "several kinds of question"


def test_unified_is_deterministic_and_on_the_cli(tmp_path):
    for name in ("a", "b"):
        write_mini(tmp_path / name, kind="unified", count=4, size=16, seed=2)
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    result = CliRunner().invoke(app, ["data", "mini", str(tmp_path / "cli"), "--kind", "unified", "--count", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(tmp_path / "cli" / "unified" / f"{kind}.parquet") for kind in ("t2i", "lm", "mmu")]
