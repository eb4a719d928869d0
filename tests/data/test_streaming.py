"""ParquetStream: exact sharding over ranks x DataLoader workers, seeded order, exact resume, projection, URLs."""

import importlib.util
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from canvaslab.data.streaming import STREAM_TAG, ParquetStream, find_parquet_files, torch_dataset
from canvaslab.errors import InputError

ROWS_PER_FILE = (37, 23, 41, 19, 30)  # uneven on purpose: streams end at different times


def write_files(root, counts=ROWS_PER_FILE, row_group_size=8, blob=16):
    """Files of consecutive ids with a text and a blob column; returns all ids."""
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for number, count in enumerate(counts):
        ids = list(range(start, start + count))
        blobs = [np.random.default_rng(i).bytes(blob) for i in ids]  # incompressible, like encoded images
        table = pa.table({"id": ids, "text": [f"row {i}" for i in ids], "blob": blobs})
        pq.write_table(table, root / f"part-{number:02d}.parquet", row_group_size=row_group_size)
        start += count
    return list(range(start))


@pytest.fixture()
def files(tmp_path):
    return tmp_path / "data", write_files(tmp_path / "data")


def ids_of(items):
    """ids from rows, record batches or column dicts, in order."""
    out = []
    for item in items:
        if isinstance(item, dict) and isinstance(item["id"], list):
            out += item["id"]
        elif isinstance(item, dict):
            out.append(item["id"])
        else:
            out += item.column("id").to_pylist()
    return out


def loader_ids(stream, batched, num_workers=2):
    from torch.utils.data import DataLoader

    dataset = torch_dataset(stream)
    loader = DataLoader(dataset, batch_size=None if batched else 4, num_workers=num_workers)
    batches = list(loader)
    return [int(i) for batch in batches for i in batch["id"]], batches


# --- sharding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True], ids=["rows", "batches"])
def test_two_ranks_two_workers_read_every_row_once_per_epoch(files, batched):
    root, expected = files
    ranks = [ParquetStream(root, columns=["id"], shuffle_buffer=16, seed=3, rank=rank, world_size=2,
                           batch_size=5 if batched else None, batch_format="dict") for rank in range(2)]
    epochs = []
    for epoch in range(2):
        seen = []
        for stream in ranks:
            stream.set_epoch(epoch)
            ids, _ = loader_ids(stream, batched)
            seen += ids
        assert Counter(seen) == Counter(expected), f"epoch {epoch}: every row exactly once"
        epochs.append(seen)
    assert epochs[0] != epochs[1], "each epoch has its own order"


def test_fewer_files_than_streams_shards_by_row_group(tmp_path):
    expected = write_files(tmp_path / "one", counts=(50,), row_group_size=6)  # 1 file, 9 row groups, 4 streams
    seen, lengths = [], []
    for rank in range(2):
        stream = ParquetStream(tmp_path / "one", columns=["id"], shuffle_buffer=4, rank=rank, world_size=2)
        for worker in range(2):
            got = ids_of(stream.iter_worker(worker, 2))
            assert len(got) == stream.stream_rows(0, worker, 2)
            seen += got
            lengths.append(len(got))
    assert sorted(seen) == expected
    assert all(lengths), "every stream got some row groups"


def test_more_streams_than_row_groups_still_reads_each_row_once(tmp_path):
    expected = write_files(tmp_path / "tiny", counts=(5,), row_group_size=5)  # one row group for 4 streams
    seen = []
    for rank in range(2):
        stream = ParquetStream(tmp_path / "tiny", rank=rank, world_size=2)
        for worker in range(2):
            seen += ids_of(stream.iter_worker(worker, 2))
    assert sorted(seen) == expected
    repeating = ParquetStream(tmp_path / "tiny", rank=1, world_size=2, repeat=True, shuffle=False)
    with pytest.raises(InputError, match="gets no rows"):
        next(iter(repeating))


# --- order ------------------------------------------------------------------------------------


def test_order_is_fixed_by_the_seed(files):
    root, expected = files
    first = ids_of(ParquetStream(root, shuffle_buffer=32, seed=7))
    again = ids_of(ParquetStream(root, shuffle_buffer=32, seed=7))
    other = ids_of(ParquetStream(root, shuffle_buffer=32, seed=8))
    assert first == again and sorted(first) == expected
    assert other != first and sorted(other) == expected
    plain = ids_of(ParquetStream(root, shuffle=False))
    assert plain == expected, "no shuffle: files in natural order, rows in file order"


def test_batched_mode_is_the_row_order_cut_into_batches(files):
    root, _ = files
    rows = ids_of(ParquetStream(root, shuffle_buffer=20, seed=2))
    batches = list(ParquetStream(root, columns=["id", "text"], shuffle_buffer=20, seed=2, batch_size=16))
    assert [len(b) for b in batches[:-1]] == [16] * (len(batches) - 1)
    assert ids_of(batches) == rows
    assert batches[0].schema.names == ["id", "text"]
    dropped = list(ParquetStream(root, shuffle_buffer=20, seed=2, batch_size=16, drop_last=True))
    assert len(dropped) == len(rows) // 16


def test_repeat_runs_the_following_epochs(files):
    root, expected = files
    endless = iter(ParquetStream(root, shuffle_buffer=8, seed=1, repeat=True))
    two_epochs = [next(endless)["id"] for _ in range(2 * len(expected))]
    by_epoch = []
    for epoch in range(2):
        stream = ParquetStream(root, shuffle_buffer=8, seed=1)
        stream.set_epoch(epoch)
        by_epoch += ids_of(stream)
    assert two_epochs == by_epoch


def test_rows_are_dicts_of_python_values(files):
    root, _ = files
    row = next(iter(ParquetStream(root, shuffle=False)))
    assert row == {"id": 0, "text": "row 0", "blob": np.random.default_rng(0).bytes(16)}


# --- resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize("buffer", [24, 1000], ids=["buffer<rows", "buffer>rows"])
@pytest.mark.parametrize("batch_size", [None, 7], ids=["rows", "batches"])
@pytest.mark.parametrize("cut", [0, 1, 9, 100, 149])
def test_resume_yields_what_the_uninterrupted_run_would(files, batch_size, cut, buffer):
    root, expected = files

    def make():  # read_rows=5 makes the batched buffer compact its chunks several times
        return ParquetStream(root, columns=["id"], shuffle_buffer=buffer, seed=5, repeat=True, batch_size=batch_size,
                             read_rows=5)

    whole = iter(make())
    items = 2 * len(expected) // (batch_size or 1)  # runs into the second epoch
    cut //= batch_size or 1  # items taken before the interruption
    uninterrupted = ids_of(next(whole) for _ in range(items))
    first = make()
    iterator = iter(first)
    head = ids_of(next(iterator) for _ in range(cut))
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    iterator = iter(resumed)
    tail = ids_of(next(iterator) for _ in range(items - cut))
    assert head + tail == uninterrupted


def test_resume_through_dataloader_workers_continues_the_batch_order(files):
    from torch.utils.data import DataLoader

    root, expected = files

    def make():
        return ParquetStream(root, columns=["id"], shuffle_buffer=10, seed=4, rank=1, world_size=2)

    uninterrupted, _ = loader_ids(make(), batched=False)
    stream = make()
    loader = iter(DataLoader(torch_dataset(stream), batch_size=4, num_workers=2))
    head = []
    for _ in range(5):  # an odd number: the next batch is due from worker 1
        batch = next(loader)
        stream.advance(batch)
        head += [int(i) for i in batch["id"]]
    del loader
    state = stream.state_dict()
    assert state["next_worker"] == 1 and state["num_workers"] == 2
    resumed = make()
    resumed.load_state_dict(state)
    tail, _ = loader_ids(resumed, batched=False)
    assert head + tail == uninterrupted
    assert set(uninterrupted) < set(expected)
    with pytest.raises(InputError, match="same number of workers"):
        next(iter(torch_dataset(resumed)))  # in-process: 1 worker, saved with 2


@pytest.mark.parametrize("batch_size", [None, 4], ids=["rows", "batches"])
def test_a_state_saved_by_rank_0_resumes_rank_1_in_lockstep(files, batch_size):
    """accelerate saves custom state on the main process only: every rank resumes from rank 0's state."""
    root, _ = files

    def make(rank):
        return ParquetStream(root, columns=["id"], shuffle_buffer=8, seed=2, repeat=True, rank=rank, world_size=2,
                             batch_size=batch_size)

    assert make(0).stream_rows(0) != make(1).stream_rows(0), "uneven streams: their epochs end at different rows"
    steps = (make(0).stream_rows(0) + make(1).stream_rows(0)) // (batch_size or 1)  # well past an epoch end
    ranks = [make(0), make(1)]
    iterators = [iter(stream) for stream in ranks]
    for _ in range(steps):  # lockstep: the same number of items from each rank per step
        for iterator in iterators:
            next(iterator)
    where = ranks[1].state_dict()["streams"]
    expected = ids_of(next(iterators[1]) for _ in range(10))
    resumed = make(1)
    resumed.load_state_dict(ranks[0].state_dict())
    assert resumed.state_dict()["streams"] == where
    iterator = iter(resumed)
    assert ids_of(next(iterator) for _ in range(10)) == expected


def test_a_state_from_other_settings_is_refused(files):
    root, _ = files
    stream = ParquetStream(root, shuffle_buffer=10, seed=1)
    next(iter(stream))
    state = stream.state_dict()
    with pytest.raises(InputError, match="seed=1 and is now 2"):
        ParquetStream(root, shuffle_buffer=10, seed=2).load_state_dict(state)
    with pytest.raises(InputError, match="not a ParquetStream state_dict"):
        stream.load_state_dict({"epoch": 0})


def test_set_epoch_moves_past_the_resume_point(files):
    root, expected = files
    stream = ParquetStream(root, seed=1)
    iterator = iter(stream)
    [next(iterator) for _ in range(10)]
    resumed = ParquetStream(root, seed=1)
    resumed.load_state_dict(stream.state_dict())
    assert len(ids_of(resumed)) == len(expected) - 10
    resumed.set_epoch(1)
    assert sorted(ids_of(resumed)) == expected


# --- columns, sources, errors -----------------------------------------------------------------


class _CountingFiles:
    """An fsspec local filesystem that counts the bytes readers take from it."""

    @staticmethod
    def register():
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        class CountingFileSystem(LocalFileSystem):
            protocol = ("countingfs",)
            read_bytes = 0

            @classmethod
            def _strip_protocol(cls, path):
                path = str(path)
                return super()._strip_protocol(path.removeprefix("countingfs://"))

            def _open(self, path, mode="rb", **kwargs):
                handle = super()._open(path, mode, **kwargs)
                read = handle.read

                def counted(size=-1):
                    data = read(size)
                    CountingFileSystem.read_bytes += len(data)
                    return data

                handle.read = counted
                return handle

        fsspec.register_implementation("countingfs", CountingFileSystem, clobber=True)
        return CountingFileSystem


def test_projection_reads_only_the_requested_columns(tmp_path):
    write_files(tmp_path / "blobs", counts=(400,), row_group_size=50, blob=4000)  # 1.6 MB of blob column
    counting = _CountingFiles.register()
    url = f"countingfs://{tmp_path / 'blobs'}"
    rows = list(ParquetStream(url, columns=["id"]))
    assert rows[0] == {"id": 0} and len(rows) == 400
    projected, counting.read_bytes = counting.read_bytes, 0
    assert len(list(ParquetStream(url))) == 400
    everything = counting.read_bytes
    assert everything > 400 * 4000
    # what is left is the footer and pyarrow's 64 kB read-ahead of it
    assert projected < everything / 10, f"reading ids took {projected} of {everything} bytes"


def test_fsspec_urls_are_read_and_a_missing_filesystem_is_named(tmp_path):
    import fsspec

    table = pa.table({"id": [1, 2, 3]})
    with fsspec.open("memory://bucket/set/a.parquet", "wb") as handle:
        pq.write_table(table, handle)
    assert ids_of(ParquetStream("memory://bucket/set", shuffle=False)) == [1, 2, 3]
    [found] = find_parquet_files("memory://bucket/set/*.parquet")
    assert found.name.startswith("memory://") and found.name.endswith("/bucket/set/a.parquet")
    with pytest.raises(InputError, match=r"no installed filesystem package handles bogus:// URLs"):
        ParquetStream("bogus://bucket/data.parquet")
    if importlib.util.find_spec("s3fs") is None:
        with pytest.raises(InputError, match=r"needs the s3fs package for s3:// URLs: pip install s3fs"):
            ParquetStream("s3://bucket/data/*.parquet")


def test_optional_columns_are_none_where_a_file_lacks_them(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    pq.write_table(pa.table({"id": [0, 1], "caption": ["a", "b"]}), root / "a.parquet")
    pq.write_table(pa.table({"id": [2]}), root / "b.parquet")
    rows = list(ParquetStream(root, columns=["id", "caption"], optional_columns=True, shuffle=False))
    assert rows == [{"id": 0, "caption": "a"}, {"id": 1, "caption": "b"}, {"id": 2, "caption": None}]
    batch = next(iter(ParquetStream(root, columns=["id", "caption"], optional_columns=True, shuffle=False, batch_size=3)))
    assert batch.column("caption").to_pylist() == ["a", "b", None]
    with pytest.raises(InputError, match=r"b.parquet has no column\(s\) \['caption'\]"):
        list(ParquetStream(root, columns=["id", "caption"], shuffle=False))


def test_bad_sources_and_options_are_one_line_errors(tmp_path, files):
    root, _ = files
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    cases = [
        (lambda: ParquetStream(tmp_path / "empty"), "holds no .parquet files"),
        (lambda: ParquetStream(str(tmp_path / "nope" / "*.parquet")), "matches no .parquet files"),
        (lambda: ParquetStream(tmp_path / "missing.parquet"), "does not exist"),
        (lambda: ParquetStream(tmp_path / "junk.parquet"), "cannot read parquet file"),
        (lambda: ParquetStream(root, columns=["id", "label"]), r"has no column\(s\) \['label'\]: its columns are"),
        (lambda: ParquetStream(root, rank=2, world_size=2), "rank must be from 0 to world_size - 1"),
        (lambda: ParquetStream(root, batch_size=0), "batch_size must be 1 or more"),
        (lambda: ParquetStream(root, batch_format="pandas"), "batch_format must be one of arrow, dict"),
    ]
    for make, message in cases:
        with pytest.raises(InputError, match=message) as raised:
            make()
        assert "\n" not in str(raised.value)


def test_tagged_items_and_advance(files):
    root, _ = files
    stream = ParquetStream(root, columns=["id"], batch_size=6, batch_format="dict", shuffle=False)
    item = next(iter(torch_dataset(stream)))
    assert item["id"] == list(range(6)) and item[STREAM_TAG] == (0, 1, 0, 6)
    stream.advance(item)
    assert stream.state_dict()["streams"] == {"0/0": [0, 6]}
    tokens = next(iter(torch_dataset(stream, transform=lambda batch: {"n": np.asarray(batch["id"]).sum()})))
    assert tokens["n"] == sum(range(6))
    with pytest.raises(InputError, match="needs a batch from torch_dataset"):
        stream.advance({"id": [1]})


def test_importing_the_stream_does_not_import_torch():
    code = "import sys, canvaslab.data.streaming\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
