"""Converters: labelled parquet -> class folders / WebDataset shards, caption archives -> sqlite, joins by key."""

import io
import json
import pickle
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from canvaslab.cli.main import app
from canvaslab.data.convert import (
    CaptionStore,
    captions_to_sqlite,
    class_folders,
    join_captions,
    parquet_to_class_folders,
    parquet_to_webdataset,
    read_class_names,
    write_captioned_shards,
)
from canvaslab.errors import InputError

NAMES = ["tench", "crane", "a/b testers", "crane"]  # ImageNet really has two classes named "crane"
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def jpeg(seed, size=8):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_imagenet(root, labels=((0, 1, 2), (3, -1, 0, 1)), names=NAMES, with_paths=True):
    """Parquet files like the hub's ImageNet: {bytes, path} images, int labels, ClassLabel names in the schema."""
    root.mkdir(parents=True, exist_ok=True)
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    schema = pa.schema([("image", HF_IMAGE), ("label", pa.int64())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})} if names else None)
    rows, index = {}, 0
    for number, file_labels in enumerate(labels):
        table_rows = []
        for label in file_labels:
            path = f"n{index:04d}_{label}.JPEG" if with_paths else None
            table_rows.append({"image": {"bytes": jpeg(index), "path": path}, "label": label})
            rows[f"n{index:04d}_{label}" if with_paths else (number, len(table_rows) - 1)] = (jpeg(index), label)
            index += 1
        pq.write_table(pa.Table.from_pylist(table_rows, schema=schema), root / f"train-{number:05d}.parquet", row_group_size=2)
    return rows


def tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tar_members(path):
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}


# --- class folders ----------------------------------------------------------------------------


def test_class_folders_named_from_the_parquet_features(tmp_path):
    rows = write_imagenet(tmp_path / "in")
    report = parquet_to_class_folders(tmp_path / "in", tmp_path / "out")
    assert (report.rows, report.written, report.skipped, report.unlabelled) == (7, 6, 0, 1)
    folders = class_folders(NAMES)
    assert folders == ["tench", "crane_1", "a_b testers", "crane_3"]
    written = tree(tmp_path / "out")
    expected = {f"{folders[label]}/{key}.jpg": data for key, (data, label) in rows.items() if label >= 0}
    assert {k: v for k, v in written.items() if k != "classes.json"} == expected
    listing = json.loads(written["classes.json"])
    assert listing[1] == {"label": 1, "name": "crane", "folder": "crane_1"} and len(listing) == 4


def test_class_folders_resume_and_leave_no_partial_files(tmp_path):
    write_imagenet(tmp_path / "in")
    parquet_to_class_folders(tmp_path / "in", tmp_path / "out")
    victim = tmp_path / "out" / "tench" / "n0000_0.jpg"
    victim.unlink()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.jpg")}
    report = parquet_to_class_folders(tmp_path / "in", tmp_path / "out")
    assert (report.written, report.skipped) == (1, 5)
    assert victim.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "existing files are not rewritten"
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]


def test_class_names_from_a_file_and_keys_without_paths(tmp_path):
    write_imagenet(tmp_path / "in", labels=((0, 1), (1,)), names=None, with_paths=False)
    (tmp_path / "names.txt").write_text("goldfish\nshark\n")
    report = parquet_to_class_folders(tmp_path / "in", tmp_path / "out", classes=tmp_path / "names.txt")
    assert report.classes == ["goldfish", "shark"]
    assert sorted(p for p in tree(tmp_path / "out") if p.endswith(".jpg")) == [
        "goldfish/train-00000-0000000.jpg", "shark/train-00000-0000001.jpg", "shark/train-00001-0000000.jpg"]
    parquet_to_class_folders(tmp_path / "in", tmp_path / "numbers")
    assert sorted(p.name for p in (tmp_path / "numbers").iterdir() if p.is_dir()) == ["0000", "0001"]
    (tmp_path / "names.json").write_text(json.dumps({"0": "goldfish", "1": "shark"}))
    assert read_class_names(tmp_path / "names.json") == ["goldfish", "shark"]
    (tmp_path / "one.json").write_text('["goldfish"]')
    with pytest.raises(InputError, match="label 1 has no class name: the class list has 1 names"):
        parquet_to_class_folders(tmp_path / "in", tmp_path / "short", classes=tmp_path / "one.json")


def test_duplicate_keys_and_bad_columns_are_refused(tmp_path):
    root = tmp_path / "dupes"
    root.mkdir()
    table = pa.Table.from_pylist([{"image": {"bytes": jpeg(i), "path": "same.jpg"}, "label": 0} for i in range(2)],
                                 schema=pa.schema([("image", HF_IMAGE), ("label", pa.int64())]))
    pq.write_table(table, root / "a.parquet")
    with pytest.raises(InputError, match="has the key 'same' of an earlier row.*--keys row"):
        parquet_to_class_folders(root, tmp_path / "out")
    report = parquet_to_class_folders(root, tmp_path / "by-row", keys="row")
    assert report.written == 2
    with pytest.raises(InputError, match=r"has no column\(s\) \['cls'\].*--label-column"):
        parquet_to_class_folders(root, tmp_path / "x", label_column="cls")


# --- WebDataset shards ------------------------------------------------------------------------


def test_webdataset_shards_hold_image_label_and_class_name(tmp_path):
    rows = write_imagenet(tmp_path / "in")
    report = parquet_to_webdataset(tmp_path / "in", tmp_path / "wds", shard_size=4)
    assert (report.written, report.shards) == (6, 2)
    assert sorted(tree(tmp_path / "wds")) == ["shard-000000.tar", "shard-000001.tar"]
    members = {**tar_members(tmp_path / "wds" / "shard-000000.tar"), **tar_members(tmp_path / "wds" / "shard-000001.tar")}
    assert len(tar_members(tmp_path / "wds" / "shard-000000.tar")) == 4 * 3
    for key, (data, label) in rows.items():
        if label < 0:
            assert f"{key}.jpg" not in members
            continue
        assert members[f"{key}.jpg"] == data
        assert members[f"{key}.cls"] == str(label).encode()
        assert members[f"{key}.txt"] == NAMES[label].encode()
    again = parquet_to_webdataset(tmp_path / "in", tmp_path / "again", shard_size=4)
    assert again.written == 6 and tree(tmp_path / "again") == tree(tmp_path / "wds"), "same input, same bytes"


def test_webdataset_resume_skips_complete_shards_and_an_interrupted_one_leaves_nothing(tmp_path):
    write_imagenet(tmp_path / "in")
    complete = tree(tmp_path / "in")
    parquet_to_webdataset(tmp_path / "in", tmp_path / "wds", shard_size=2)
    finished = tree(tmp_path / "wds")
    (tmp_path / "wds" / "shard-000001.tar").unlink()
    report = parquet_to_webdataset(tmp_path / "in", tmp_path / "wds", shard_size=2)
    assert (report.written, report.skipped, report.shards) == (2, 4, 3)
    assert tree(tmp_path / "wds") == finished

    def stop_after_three(done, total):  # the third sample opened shard 1
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        parquet_to_webdataset(tmp_path / "in", tmp_path / "cut", shard_size=2, progress=stop_after_three)
    assert sorted(tree(tmp_path / "cut")) == ["shard-000000.tar"], "the shard being written is not left behind"
    assert tree(tmp_path / "in") == complete


# --- captions ---------------------------------------------------------------------------------


class Unseekable(io.RawIOBase):
    """A pipe-like stream: reading works, seeking does not, so only tarfile's stream mode can read it."""

    def __init__(self, data):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def seekable(self):
        return False

    def seek(self, *args):
        raise io.UnsupportedOperation("not seekable")


def caption_archive(captions, extra=()):
    """A .tar.gz of <path>.txt files (plus `extra` (name, bytes) members), as bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        folder = tarfile.TarInfo("captions/00")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, data in [*((f"{path}.txt", text.encode()) for path, text in captions.items()), *extra]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


CAPTIONS = {f"captions/{i // 4:02d}/sa_{i}": f"a photo number {i}\n" for i in range(10)}


def test_caption_archive_streams_into_sqlite_in_batches(tmp_path):
    data = caption_archive(CAPTIONS, extra=[("captions/00/._sa_1.txt", b"\x00\x05junk"), ("captions/README.md", b"x")])
    report = captions_to_sqlite(Unseekable(data), tmp_path / "c.sqlite", batch_rows=3)
    assert (report.files, report.added, report.replaced, report.ignored, report.total) == (10, 10, 0, 3, 10)
    store = CaptionStore(tmp_path / "c.sqlite")
    assert store.get("sa_7") == "a photo number 7" and store.get("sa_99") is None
    assert store.get_many(["sa_1", "nope", "sa_2"]) == {"sa_1": "a photo number 1", "sa_2": "a photo number 2"}
    assert len(store) == 10 and "sa_0" in store
    worker_copy = pickle.loads(pickle.dumps(store))
    assert worker_copy.get("sa_3") == "a photo number 3"
    (tmp_path / "c.tar.gz").write_bytes(data)
    again = captions_to_sqlite(tmp_path / "c.tar.gz", tmp_path / "c.sqlite")
    assert (again.added, again.replaced, again.total) == (0, 10, 10), "a re-run is idempotent"
    by_path = captions_to_sqlite(tmp_path / "c.tar.gz", tmp_path / "p.sqlite", key="path")
    assert by_path.total == 10 and CaptionStore(tmp_path / "p.sqlite").get("captions/02/sa_9") == "a photo number 9"


def test_a_truncated_archive_keeps_the_committed_batches(tmp_path):
    many = {f"sa_{i}": "x" * 200 + str(i) for i in range(400)}
    data = caption_archive(many)
    with pytest.raises(InputError, match="ends early or is damaged") as raised:
        captions_to_sqlite(io.BytesIO(data[: len(data) // 2]), tmp_path / "c.sqlite", batch_rows=50)
    assert "\n" not in str(raised.value)
    kept = CaptionStore(tmp_path / "c.sqlite").get_many(many)
    assert 50 < len(kept) < 400, "what came before the damage is saved, the last partial batch too"
    assert all(kept[key] == many[key] for key in kept)
    assert captions_to_sqlite(io.BytesIO(data), tmp_path / "c.sqlite").total == 400
    (tmp_path / "not.tar.gz").write_bytes(b"plain text")
    with pytest.raises(InputError, match="cannot read .* as a tar archive"):
        captions_to_sqlite(tmp_path / "not.tar.gz", tmp_path / "d.sqlite")
    with pytest.raises(InputError, match="does not exist"):
        CaptionStore(tmp_path / "none.sqlite")


def test_join_attaches_captions_to_tar_and_parquet_shards_by_key(tmp_path):
    rows = write_imagenet(tmp_path / "in")
    parquet_to_webdataset(tmp_path / "in", tmp_path / "wds", shard_size=4)
    labelled = sorted(key for key, (_, label) in rows.items() if label >= 0)
    captioned = labelled[::2]
    captions_to_sqlite(io.BytesIO(caption_archive({f"deep/{k}": f"caption of {k}" for k in captioned})), tmp_path / "c.sqlite")

    join = join_captions(tmp_path / "wds", tmp_path / "c.sqlite")
    samples = list(join)
    assert sorted(s.key for s in samples) == captioned
    for sample in samples:
        assert sample.caption == f"caption of {sample.key}" and sample.image == rows[sample.key][0]
        assert sample.label == rows[sample.key][1] and sample.ext == "jpg"
    assert join.missing_count == len(labelled) - len(captioned)
    assert sorted(join.missing) == sorted(set(labelled) - set(captioned))

    from_parquet = join_captions(tmp_path / "in", tmp_path / "c.sqlite", keep_missing=True)
    keyed = {s.key: s.caption for s in from_parquet}
    assert len(keyed) == 7 and {k for k, c in keyed.items() if c} == set(captioned)

    report = write_captioned_shards(join_captions(tmp_path / "wds", tmp_path / "c.sqlite"), tmp_path / "joined", shard_size=2)
    members = tar_members(tmp_path / "joined" / "shard-000000.tar")
    first = captioned[0]
    assert report.written == len(captioned) and members[f"{first}.txt"] == f"caption of {first}".encode()


# --- CLI --------------------------------------------------------------------------------------


def test_cli_converts_and_reports(tmp_path):
    runner = CliRunner()
    write_imagenet(tmp_path / "in")
    result = runner.invoke(app, ["--json", "data", "parquet-to-classes", str(tmp_path / "in"), str(tmp_path / "wds"),
                                 "--format", "webdataset", "--shard-size", "5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"out": str(tmp_path / "wds"), "rows": 7, "written": 6, "skipped": 0,
                                         "unlabelled": 1, "shards": 2, "classes": 4}
    folders = runner.invoke(app, ["data", "parquet-to-classes", str(tmp_path / "in"), str(tmp_path / "folders")])
    assert folders.exit_code == 0 and folders.stdout.strip() == str(tmp_path / "folders")
    assert "6 written" in folders.stderr and "4 named classes" in folders.stderr

    (tmp_path / "c.tar.gz").write_bytes(caption_archive({"n0000_0": "a tench"}))
    loaded = runner.invoke(app, ["data", "captions-to-sqlite", str(tmp_path / "c.tar.gz"), str(tmp_path / "c.sqlite")])
    assert loaded.exit_code == 0 and "1 new keys" in loaded.stderr
    joined = runner.invoke(app, ["--json", "data", "join-captions", str(tmp_path / "wds"), str(tmp_path / "c.sqlite"),
                                 str(tmp_path / "joined")])
    assert joined.exit_code == 0, joined.output
    summary = json.loads(joined.stdout)
    assert (summary["samples"], summary["written"], summary["missing"]) == (6, 1, 5)

    bad = runner.invoke(app, ["data", "parquet-to-classes", str(tmp_path / "nothing"), str(tmp_path / "x")])
    assert bad.exit_code == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
