"""`ParquetStream`: parquet rows streamed by rank and DataLoader worker, shuffled, resumable.

Built for datasets too big to index (RefinedWeb text, ImageNet or SA-1B parquet shards): nothing is
listed row by row, row groups are decoded by pyarrow in record batches of `read_rows` rows with only
the requested columns, and no pandas or per-row dicts of whole row groups are ever made.

Sharding. Each epoch the files are put in an order drawn from (seed, epoch) (or kept sorted with
`shuffle=False`) and dealt round robin: to ranks first, then to the DataLoader workers of a rank.
With fewer files than rank x worker streams the same is done with row groups instead, so every row
is still read exactly once per epoch (a stream without a row group gets nothing).

Order inside a stream. The stream's rows go through a shuffle buffer of `shuffle_buffer` rows whose
random draws come from (seed, epoch, rank, worker, workers) and depend only on how many rows came in,
never on their content. Per-row and batched modes use the same buffer, so batched mode yields exactly
the per-row order cut into batches.

Resume. `state_dict()` records the epoch and, per (rank, worker) stream, the epoch and number of rows
handed out. A resumed stream first replays those positions as plain integers through the same shuffle
buffer (no data read), then reads only the rows still in the buffer and continues reading where the
uninterrupted run would be: it yields exactly the rows, in exactly the order, that the uninterrupted
run would have yielded next. The replay costs a fraction of a microsecond per skipped row. It needs the
same files, seed, shuffle settings, `repeat`, world size and worker count; batch size may change. A
state saved by one rank resumes the others when all ranks took the same number of rows.

Memory. One row group's requested columns at a time: pyarrow's `iter_batches` over several row groups
pre-buffers ahead, so each call gets one.

pyarrow is imported when a stream is created; torch only by `torch_dataset`, so DataLoader workers and
ranks that only read data stay light.
"""

from __future__ import annotations

import functools
import glob
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from canvaslab.data.records import natural_key
from canvaslab.errors import InputError

PARQUET_SUFFIXES = (".parquet", ".pq")
STREAM_TAG = "_stream"  # key torch_dataset adds to each item: (worker, workers, epoch, rows)
BATCH_FORMATS = ("arrow", "dict")
_DRAW_BLOCK = 4096  # shuffle-buffer slots drawn per numpy call
_OPEN_FILES = 1  # open parquet handles per process: a finished reader keeps its last row group in memory
_GLOB_CHARS = set("*?[")


# --- sources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetSource:
    """One parquet file: a local path, or a path on an fsspec filesystem (`fs` not None)."""

    name: str  # how messages name it: the local path or the full URL
    path: str  # what `fs` (or the local file system) opens
    fs: Any = None


def find_parquet_files(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                       storage_options: dict[str, Any] | None = None) -> list[ParquetSource]:
    """Parquet files named by paths, folders (searched recursively), globs or fsspec URLs, in natural order.

    The order is fixed by the names alone, so every rank and worker sees the same list.
    """
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise InputError("no parquet source given: pass files, folders, globs or URLs")
    found: list[ParquetSource] = []
    for item in items:
        text = os.fspath(item)
        found += _expand_url(text, storage_options or {}) if _is_url(text) else _expand_local(text)
    return found


def _is_url(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").isalnum() and len(scheme) > 1


def _is_parquet(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(PARQUET_SUFFIXES) and not base.startswith(".")


def _sorted_sources(sources: Iterable[ParquetSource]) -> list[ParquetSource]:
    return sorted(sources, key=lambda source: natural_key(source.name))


def _expand_local(text: str) -> list[ParquetSource]:
    path = Path(text)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and _is_parquet(p.name)
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not files:
            raise InputError(f"{path} holds no .parquet files: pass a folder of parquet files, a file or a glob")
    elif path.is_file():
        files = [path]
    elif _GLOB_CHARS & set(text):
        files = [Path(p) for p in glob.glob(text, recursive=True) if _is_parquet(p) and Path(p).is_file()]
        if not files:
            raise InputError(f"{text} matches no .parquet files: check the pattern (quote it in a shell)")
    else:
        raise InputError(f"{text} does not exist: pass parquet files, folders, globs or URLs")
    return _sorted_sources(ParquetSource(str(p), str(p)) for p in files)


def filesystem_for(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path on it) for a URL; a missing package is one InputError naming it."""
    scheme = url.partition("://")[0]
    try:
        import fsspec
        from fsspec.registry import known_implementations
    except ImportError:
        raise InputError(f"reading {url} needs the fsspec package: pip install fsspec") from None
    package = known_implementations.get(scheme, {}).get("class", "").split(".")[0]
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError:
        raise InputError(f"reading {url} needs the {package or scheme} package for {scheme}:// URLs: "
                         f"pip install {package or scheme}") from None
    except ValueError as exc:
        if "Protocol not known" not in str(exc):
            raise InputError(f"cannot open {url}: {_first_line(exc)}") from None
        raise InputError(f"cannot read {url}: no installed filesystem package handles {scheme}:// URLs "
                         "(install its fsspec implementation, e.g. s3fs for s3:// or gcsfs for gs://)") from None


def _expand_url(url: str, storage_options: dict[str, Any]) -> list[ParquetSource]:
    fs, path = filesystem_for(url, storage_options)
    try:
        if _GLOB_CHARS & set(path):
            paths = [p for p in fs.glob(path) if _is_parquet(p)]
        elif fs.isdir(path):
            paths = [p for p in fs.find(path) if _is_parquet(p)]
        elif fs.exists(path):
            paths = [path]
        else:
            raise InputError(f"{url} does not exist")
    except OSError as exc:
        raise InputError(f"cannot list {url}: {_first_line(exc)}") from None
    if not paths:
        raise InputError(f"{url} matches no .parquet files")
    return _sorted_sources(ParquetSource(fs.unstrip_protocol(p), p, fs) for p in paths)


def open_parquet(source: ParquetSource) -> tuple[Any, Any]:
    """(pyarrow ParquetFile, the file object to close or None); unreadable files are InputErrors."""
    import pyarrow.parquet as pq

    handle = None
    try:
        if source.fs is None:
            return pq.ParquetFile(source.path), None
        handle = source.fs.open(source.path, "rb")
        return pq.ParquetFile(handle), handle
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        if handle is not None:
            handle.close()
        raise InputError(f"cannot read parquet file {source.name}: {_first_line(exc)}") from None


def read_batches(parquet: Any, columns: list[str] | None, batch_size: int, groups: Iterable[int] | None = None) -> Iterator[Any]:
    """Record batches of a ParquetFile, asking pyarrow for one row group at a time.

    Given several row groups in one call, pyarrow pre-buffers ahead and holds ~5 of them (measured
    141 MB of Arrow memory for 27 MB row groups, against 39 MB this way).
    """
    for group in range(parquet.num_row_groups) if groups is None else groups:
        yield from parquet.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# --- the shuffle buffer -------------------------------------------------------------------------


class ShuffleBuffer:
    """A buffer of `size` items: once full, each push hands out a random held item and takes its slot.

    The random slots depend only on the number of pushes, so pushing integer positions reproduces the
    order of a run on real rows; that replay is how a stream resumes. `size` <= 1 passes items through.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.items: list[Any] = []
        self.draining = False
        self._draws: list[int] = []
        self._used = 0
        self._next = 0  # index of the next item to drain

    def push_many(self, items: Iterable[Any]) -> list[Any]:
        """Push each item; returns the items that came out (one per push once the buffer is full)."""
        if self.size <= 1:
            return list(items)
        held, size, draws, used = self.items, self.size, self._draws, self._used
        out = []
        for item in items:  # the hot loop of shuffled reading: locals only
            if len(held) < size:
                held.append(item)
                continue
            if used == len(draws):
                draws, used = self.rng.integers(0, size, _DRAW_BLOCK).tolist(), 0
            slot = draws[used]
            used += 1
            out.append(held[slot])
            held[slot] = item
        self._draws, self._used = draws, used
        return out

    def finish(self) -> None:
        """No more input: the held items will drain in a random order."""
        if not self.draining:
            order = self.rng.permutation(len(self.items)) if self.items else []
            self.items = [self.items[j] for j in order]
            self.draining = True

    def skip(self, count: int) -> None:
        """Drop the next `count` drained items (resume)."""
        self._next = min(len(self.items), self._next + count)

    def pending(self) -> list[Any]:
        """Items not handed out yet, in the order they will drain (once finished)."""
        return self.items[self._next :]

    def replace(self, mapping: dict[Any, Any]) -> None:
        """Swap every pending item for `mapping[item]` (positions -> rows after a replay)."""
        self.items, self._next = [mapping[item] for item in self.pending()], 0

    def drain(self) -> Iterator[Any]:
        self.finish()
        while self._next < len(self.items):
            item = self.items[self._next]
            self._next += 1
            yield item


# --- Arrow helpers ----------------------------------------------------------------------------


def concat_batches(batches: list[Any]) -> Any:
    """One RecordBatch from several; column types that differ between files (null vs string) are promoted."""
    import pyarrow as pa

    if len(batches) == 1:
        return batches[0]
    try:
        return pa.concat_batches(batches)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        table = pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")
        combined = table.combine_chunks().to_batches()
        return combined[0] if combined else pa.RecordBatch.from_pylist([], schema=table.schema)


def rebatch(batches: Iterable[Any], size: int) -> Iterator[Any]:
    """Record batches of exactly `size` rows (the last may be shorter), slicing without copying where it can."""
    pending, count = [], 0
    for batch in batches:
        while len(batch):
            take = min(size - count, len(batch))
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == size:
                yield concat_batches(pending)
                pending, count = [], 0
    if pending:
        yield concat_batches(pending)


def _columns(batch: Any) -> list[list[Any]]:
    """A batch's columns as Python lists: one vectorised to_pylist per column, never per row."""
    return [column.to_pylist() for column in batch.columns]


def _row_tuples(batch: Any) -> list[tuple]:
    return list(zip(*_columns(batch))) if batch.num_columns else [()] * len(batch)


def row_maker(names: Sequence[str]) -> Callable[..., dict]:
    """A function (v0, v1, ...) -> {names[0]: v0, ...}: a dict display, 2.5x faster than dict(zip()) per row.

    Built from source like collections.namedtuple does; the names only ever appear as repr() literals.
    """
    arguments = ", ".join(f"v{i}" for i in range(len(names)))
    entries = ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names))
    return eval(f"lambda {arguments}: {{{entries}}}", {})  # noqa: S307 - literals only, see above


class _ChunkStore:
    """Record batches holding the rows a batched shuffle buffer refers to by stream position."""

    def __init__(self) -> None:
        self.starts: list[int] = []  # first position of each chunk; chunks are disjoint and ascending
        self.chunks: list[tuple[np.ndarray | None, Any]] = []  # (sorted positions or None for a range, batch)
        self.rows = 0

    def add_range(self, start: int, batch: Any) -> None:
        self.starts.append(start)
        self.chunks.append((None, batch))
        self.rows += len(batch)

    def add_rows(self, positions: np.ndarray, batch: Any) -> None:
        if len(positions):
            self.starts.append(int(positions[0]))
            self.chunks.append((positions, batch))
            self.rows += len(batch)

    def gather(self, positions: Sequence[int]) -> Any:
        """The rows at `positions`, in that order, as one RecordBatch."""
        import pyarrow as pa

        wanted = np.asarray(positions, np.int64)
        which = np.searchsorted(np.asarray(self.starts), wanted, side="right") - 1
        parts, served = [], []
        for chunk in np.unique(which):
            index = np.nonzero(which == chunk)[0]
            held, batch = self.chunks[chunk]
            local = wanted[index] - self.starts[chunk] if held is None else np.searchsorted(held, wanted[index])
            parts.append(batch.take(pa.array(local)))
            served.append(index)
        combined = concat_batches(parts)
        return combined.take(pa.array(np.argsort(np.concatenate(served), kind="stable")))

    def compact(self, live: Sequence[int]) -> None:
        """Keep only the rows at `live` positions, copied into one batch, so old read batches are freed."""
        keep = np.unique(np.asarray(live, np.int64))
        batch = self.gather(keep) if len(keep) else None
        self.starts, self.chunks, self.rows = [], [], 0
        if batch is not None:
            self.add_rows(keep, batch)


# --- the stream -------------------------------------------------------------------------------


Piece = tuple[int, "int | None"]  # (file index, row group or None for the whole file)


class ParquetStream:
    """Rows (dicts) or record batches from parquet files, sharded by rank and worker, shuffled, resumable.

    Iterating the stream in the process reads worker stream 0 of 1 and tracks its position for
    `state_dict()`; `torch_dataset(stream)` reads one stream per DataLoader worker.
    """

    def __init__(
        self,
        sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        columns: Sequence[str] | None = None,
        optional_columns: bool = False,
        batch_size: int | None = None,
        batch_format: str = "arrow",
        drop_last: bool = False,
        shuffle: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        repeat: bool = False,
        rank: int = 0,
        world_size: int = 1,
        read_rows: int = 1024,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        """`columns`: read only these (None: all); with `optional_columns`, ones a file lacks are None.
        `batch_size` None yields one dict per row, else record batches of that many rows
        (`batch_format` "arrow") or dicts of column lists ("dict"). `shuffle` orders files (or row
        groups) per epoch from (seed, epoch); `shuffle_buffer` > 1 shuffles rows inside each stream.
        `repeat` runs epochs forever (epoch, epoch + 1, ...). `read_rows` is the decode batch size."""
        _check_options(batch_size=batch_size, batch_format=batch_format, shuffle_buffer=shuffle_buffer,
                       seed=seed, rank=rank, world_size=world_size, read_rows=read_rows)
        self.files = find_parquet_files(sources, storage_options)
        self.batch_size, self.batch_format, self.drop_last = batch_size, batch_format, drop_last
        self.shuffle, self.shuffle_buffer, self.seed, self.repeat = shuffle, shuffle_buffer, seed, repeat
        self.rank, self.world_size, self.read_rows = rank, world_size, read_rows
        self.optional_columns = optional_columns
        self.epoch = 0
        self._positions: dict[str, list[int]] = {}  # "rank/worker" -> [epoch, rows handed out], live
        self._resume: dict[str, tuple[int, int]] = {}  # where loaded streams restart, until set_epoch moves on
        self._num_workers = 1
        self._rotation = 0  # DataLoader worker i serves stream (i + rotation) % workers (see torch_dataset)
        self._last_worker: int | None = None  # stream of the last batch advance() counted
        self._origin: int | None = None  # epoch the streams started counting from (see load_state_dict)
        self._handles: OrderedDict[int, Any] = OrderedDict()  # file -> open ParquetFile
        self._groups: dict[int, list[int]] = {}  # file -> rows per row group
        self._present: dict[int, list[str]] = {}  # file -> requested columns it has
        self.names = self._column_names(columns)

    # -- public API ----------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Read epoch `epoch` next (file order and shuffle depend on it); older resume points are dropped."""
        if epoch < 0:
            raise InputError(f"epoch must be 0 or more, not {epoch}")
        if epoch != self.epoch:
            self._last_worker = None  # a new epoch's DataLoader starts again at worker 0
            self._origin = None  # streams restart from this epoch
        self.epoch = epoch
        self._resume = {key: value for key, value in self._resume.items() if value[0] >= epoch}
        if not self._resume:
            self._rotation = 0

    def __iter__(self) -> Iterator[Any]:
        return self.iter_worker(0, 1)

    def iter_worker(self, worker: int = 0, num_workers: int = 1) -> Iterator[Any]:
        """Stream `worker` of `num_workers` of this rank, tracking its position for `state_dict()`."""
        position, items = self.open_stream(worker, num_workers)
        self._positions[self._key(worker)] = position
        self._num_workers = num_workers
        return items

    def open_stream(self, worker: int, num_workers: int) -> tuple[list[int], Iterator[Any]]:
        """([epoch, rows handed out], items) of one stream, not tracked by this object (DataLoader workers)."""
        if not 0 <= worker < num_workers:
            raise InputError(f"worker must be from 0 to {num_workers - 1}, not {worker}")
        epoch, skip = self._start_of(worker, num_workers)
        self._origin = epoch if self._origin is None else self._origin
        position = [epoch, skip]
        return position, self._iterate(worker, num_workers, position)

    def state_dict(self) -> dict[str, Any]:
        """Where this rank's streams are: plain ints and strings, safe for torch.save / JSON."""
        return {
            "epoch": self.epoch,
            "streams": {key: [int(e), int(r)] for key, (e, r) in sorted(self._positions.items())},
            "num_workers": self._num_workers,
            "next_worker": self._next_worker(),
            "origin": self.epoch if self._origin is None else self._origin,
            "rank": self.rank,
            **self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`: the next rows of each stream are those an uninterrupted run would yield.

        A state saved by another rank works too (accelerate saves custom state on the main process
        only) when every rank took the same number of rows, as a training loop with fixed batch sizes
        does: its positions are carried over to this rank's streams, whose epochs may end elsewhere.
        """
        try:
            saved = {key: state[key] for key in self._fingerprint()}
            epoch, streams, workers = int(state["epoch"]), state["streams"], int(state["num_workers"])
            positions = {str(key): (int(value[0]), int(value[1])) for key, value in streams.items()}
            rotation, origin, rank = int(state["next_worker"]), int(state["origin"]), int(state["rank"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise InputError("cannot resume the parquet stream: the saved state is not a ParquetStream state_dict") from None
        for key, value in self._fingerprint().items():
            if saved[key] != value:
                raise InputError(f"cannot resume the parquet stream: it was saved with {key}={saved[key]!r} and is "
                                 f"now {value!r}; resume with the same files, seed, shuffle and world size")
        self.epoch, self._num_workers, self._rotation = epoch, workers, rotation % max(1, workers)
        self._last_worker, self._origin = (self._rotation - 1) % max(1, workers), origin
        if rank != self.rank:
            positions = {self._key(int(key.split("/")[1])): self._carry_over(rank, int(key.split("/")[1]), value)
                         for key, value in positions.items()}
        self._positions = {key: list(value) for key, value in positions.items()}
        self._resume = dict(positions)

    def _carry_over(self, rank: int, worker: int, position: tuple[int, int]) -> tuple[int, int]:
        """Rank `rank`'s (epoch, rows) of a stream -> this rank's, after the same number of rows.

        Without repeat, every rank starts each epoch together, so the position is the same. With
        repeat, the rows taken since the origin epoch are counted on `rank`'s epoch lengths and laid
        out again on this rank's.
        """
        epoch, rows = position
        if not self.repeat:
            return epoch, rows
        taken = rows + sum(self.stream_rows(e, worker, self._num_workers, rank) for e in range(self._origin, epoch))
        epoch = self._origin
        while (length := self.stream_rows(epoch, worker, self._num_workers)) and taken >= length:
            taken -= length
            epoch += 1
        return epoch, taken

    def advance(self, batch: Any) -> None:
        """Count the rows of a batch from `torch_dataset` (its STREAM_TAG) as consumed, for `state_dict()`.

        Call it for every batch the training loop takes from the DataLoader: the workers' own counts are
        in other processes, and rows they prefetched but the loop did not take must not count.
        """
        tag = batch.get(STREAM_TAG) if isinstance(batch, dict) else None
        if tag is None:
            raise InputError(f"advance() needs a batch from torch_dataset(..., tag=True) with its {STREAM_TAG!r} key")
        workers, counts, epochs, rows = (_as_list(part) for part in tag)
        if self._origin is None and epochs:
            self._origin = int(epochs[0])
        for worker, num_workers, epoch, count in zip(workers, counts, epochs, rows):
            self._num_workers = int(num_workers)
            position = self._positions.setdefault(self._key(int(worker)), [int(epoch), 0])
            if epoch > position[0]:
                position[:] = [int(epoch), 0]
            if epoch == position[0]:
                position[1] += int(count)
            self._last_worker = int(worker)

    def stream_rows(self, epoch: int, worker: int = 0, num_workers: int = 1, rank: int | None = None) -> int:
        """How many rows stream `worker` of `num_workers` of this rank (or `rank`) reads in `epoch` (file footers)."""
        return sum(self._piece_rows(piece) for piece in self._pieces(epoch, worker, num_workers, rank))

    # -- setup ---------------------------------------------------------------------------------

    def _column_names(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(self._schema_names(0))
        names = list(columns)
        if len(set(names)) != len(names) or not names:
            raise InputError(f"columns must be distinct column names, not {names}")
        self._present_columns(0, names)
        return names

    def _schema_names(self, file: int) -> list[str]:
        return list(self._file(file).schema_arrow.names)

    def _present_columns(self, file: int, names: list[str]) -> list[str]:
        available = self._schema_names(file)
        missing = [name for name in names if name not in available]
        if missing and not self.optional_columns:
            raise InputError(f"{self.files[file].name} has no column(s) {missing}: its columns are {available}")
        return [name for name in names if name in available]

    def _fingerprint(self) -> dict[str, Any]:
        """What fixes the row order: a resume with other values would not continue the same stream."""
        return {"files": len(self.files), "seed": self.seed, "shuffle": self.shuffle, "repeat": self.repeat,
                "shuffle_buffer": self.shuffle_buffer if self.shuffle_buffer > 1 else 0, "world_size": self.world_size}

    def _key(self, worker: int) -> str:
        return f"{self.rank}/{worker}"

    def _next_worker(self) -> int:
        last = self._last_worker
        return 0 if last is None else (last + 1) % max(1, self._num_workers)

    def __getstate__(self) -> dict:
        # Open files stay in the process that opened them; workers reopen what they read.
        return {**self.__dict__, "_handles": OrderedDict(), "_groups": {}, "_present": {}}

    # -- files and pieces ----------------------------------------------------------------------

    def _file(self, file: int) -> Any:
        if file in self._handles:
            self._handles.move_to_end(file)
            return self._handles[file]
        parquet, _ = open_parquet(self.files[file])  # the ParquetFile keeps its file object open
        self._handles[file] = parquet
        while len(self._handles) > _OPEN_FILES:
            # Not closed here: a suspended read may still use it; it closes when the last reference goes.
            self._handles.popitem(last=False)
        if file not in self._groups:
            meta = parquet.metadata
            self._groups[file] = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        return parquet

    def _columns_of(self, file: int) -> list[str]:
        if file not in self._present:
            self._file(file)
            self._present[file] = self._present_columns(file, self.names)
        return self._present[file]

    def _row_groups(self, file: int) -> list[int]:
        if file not in self._groups:
            self._file(file)
        return self._groups[file]

    def _piece_rows(self, piece: Piece) -> int:
        groups = self._row_groups(piece[0])
        return sum(groups) if piece[1] is None else groups[piece[1]]

    def _pieces(self, epoch: int, worker: int, num_workers: int, rank: int | None = None) -> list[Piece]:
        """The files (or row groups, with fewer files than streams) of a stream of this rank (or `rank`) in `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        order = [int(f) for f in rng.permutation(len(self.files))] if self.shuffle else list(range(len(self.files)))
        streams = self.world_size * num_workers
        if len(order) >= streams:
            pieces: list[Piece] = [(f, None) for f in order]
        else:
            pieces = [(f, g) for f in order for g in range(len(self._row_groups(f)))]
            if self.shuffle:
                pieces = [pieces[int(i)] for i in rng.permutation(len(pieces))]
        return pieces[self.rank if rank is None else rank :: self.world_size][worker::num_workers]

    def _read(self, piece: Piece, offset: int = 0) -> Iterator[Any]:
        """The piece's rows from row `offset` on, as record batches with exactly `self.names` columns."""
        file, group = piece
        parquet = self._file(file)
        columns = self._columns_of(file)
        sizes = self._row_groups(file)
        groups = list(range(len(sizes))) if group is None else [group]
        while groups and offset >= sizes[groups[0]]:
            offset -= sizes[groups.pop(0)]
        if not groups:
            return
        try:
            for batch in read_batches(parquet, columns, self.read_rows, groups):
                if offset:
                    if offset >= len(batch):
                        offset -= len(batch)
                        continue
                    batch, offset = batch.slice(offset), 0
                yield self._conform(batch)
                del batch  # a slice keeps its row group's buffers alive: let go before the next read
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read parquet file {self.files[file].name}: {_first_line(exc)}") from None

    def _conform(self, batch: Any) -> Any:
        """Columns in `self.names` order; ones the file lacks (optional columns) as nulls."""
        if batch.schema.names == self.names:
            return batch
        import pyarrow as pa

        arrays = [batch.column(name) if name in batch.schema.names else pa.nulls(len(batch)) for name in self.names]
        return pa.RecordBatch.from_arrays(arrays, names=self.names)

    def _read_from(self, pieces: list[Piece], start: int) -> Iterator[Any]:
        """The stream's record batches from stream row `start` on."""
        for piece in pieces:
            if start:
                rows = self._piece_rows(piece)
                if start >= rows:
                    start -= rows
                    continue
            yield from self._read(piece, start)
            start = 0

    def _rows_at(self, pieces: list[Piece], positions: Sequence[int]) -> Any:
        """The rows at sorted stream `positions`, as one record batch in that order (resume)."""
        import pyarrow as pa

        wanted = np.asarray(positions, np.int64)
        parts, start = [], 0
        for piece in pieces:
            end = start + self._piece_rows(piece)
            local = wanted[(wanted >= start) & (wanted < end)] - start
            offset, start = 0, end
            if not len(local):
                continue
            for batch in self._read(piece):
                inside = local[(local >= offset) & (local < offset + len(batch))] - offset
                if len(inside):
                    parts.append(batch.take(pa.array(inside)))
                offset += len(batch)
                if offset > local[-1]:
                    break
        return concat_batches(parts)

    # -- iteration -----------------------------------------------------------------------------

    def _start_of(self, worker: int, num_workers: int) -> tuple[int, int]:
        """(epoch, rows already handed out) where a new iterator of this stream starts."""
        if self._resume and num_workers != self._num_workers:  # other workers read other files
            raise InputError(f"cannot resume the parquet stream with {num_workers} DataLoader worker(s): it was saved "
                             f"with {self._num_workers}; use the same number of workers")
        resume = self._resume.get(self._key(worker))
        if resume is None or resume[0] < self.epoch:
            return self.epoch, 0
        return resume

    def _iterate(self, worker: int, num_workers: int, position: list[int]) -> Iterator[Any]:
        """The stream's items, epoch after epoch with `repeat`; `position` counts what was handed out."""
        epoch, skip = position
        while True:
            position[:] = [epoch, skip]
            pieces = self._pieces(epoch, worker, num_workers)
            rng = np.random.default_rng([self.seed, epoch, self.rank, worker, num_workers])
            if self.batch_size is None:
                for chunk in self._row_chunks(pieces, rng, skip):
                    for row in chunk:  # the one per-row generator step: count, then hand out
                        position[1] += 1
                        yield row
            else:
                for batch in self._epoch_batches(pieces, rng, skip):
                    position[1] += len(batch)
                    yield batch if self.batch_format == "arrow" else batch.to_pydict()
            if not self.repeat:
                return
            if position[1] == 0:  # repeating an empty stream would spin forever
                raise InputError(
                    f"rank {self.rank} worker {worker} gets no rows in epoch {epoch}: {len(self.files)} file(s) for "
                    f"{self.world_size * num_workers} streams; write more row groups or use fewer workers/ranks"
                )
            epoch, skip = epoch + 1, 0

    def _replay(self, pieces: list[Piece], buffer: ShuffleBuffer, skip: int) -> int:
        """Push stream positions (no data) until `skip` came out; returns the next position to read."""
        total = sum(self._piece_rows(piece) for piece in pieces)
        if buffer.size <= 1:
            return min(skip, total)
        pushes = min(total, buffer.size + skip)  # once full, every push hands one out
        for start in range(0, pushes, 1 << 16):
            buffer.push_many(range(start, min(pushes, start + (1 << 16))))
        if pushes < buffer.size + skip:  # the input ran out first: the rest is skipped from the drain
            buffer.finish()
            buffer.skip(skip - max(0, pushes - buffer.size))
        return pushes

    def _row_chunks(self, pieces: list[Piece], rng: np.random.Generator, skip: int) -> Iterator[Iterable[dict]]:
        """The epoch's rows as dicts, one iterable per read batch (dicts are made as they are handed out)."""
        make = row_maker(self.names)
        buffer = ShuffleBuffer(self.shuffle_buffer, rng)
        start = self._replay(pieces, buffer, skip) if skip else 0
        if buffer.pending():
            held = sorted(buffer.pending())
            buffer.replace(dict(zip(held, _row_tuples(self._rows_at(pieces, held)))))
        for batch in self._read_from(pieces, start):
            rows, columns = len(batch), _columns(batch)
            del batch  # the rows are Python objects now; the Arrow buffers can go before the next read
            if not columns:
                yield ({} for _ in range(rows))
            elif buffer.size <= 1:
                yield map(make, *columns)
            else:
                yield itertools.starmap(make, buffer.push_many(zip(*columns)))
        yield itertools.starmap(make, buffer.drain())

    def _epoch_batches(self, pieces: list[Piece], rng: np.random.Generator, skip: int) -> Iterator[Any]:
        if self.shuffle_buffer <= 1:
            batches = rebatch(self._read_from(pieces, skip), self.batch_size)
        else:
            batches = self._shuffled_batches(pieces, rng, skip)
        for batch in batches:
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch

    def _shuffled_batches(self, pieces: list[Piece], rng: np.random.Generator, skip: int) -> Iterator[Any]:
        """Batches of the shuffle buffer's row order; the buffer holds positions, the rows stay in Arrow."""
        size, buffer, store = self.batch_size, ShuffleBuffer(self.shuffle_buffer, rng), _ChunkStore()
        start = self._replay(pieces, buffer, skip) if skip else 0
        if buffer.pending():
            held = sorted(buffer.pending())
            store.add_rows(np.asarray(held, np.int64), self._rows_at(pieces, held))
        out: list[int] = []
        for batch in self._read_from(pieces, start):
            store.add_range(start, batch)
            out += buffer.push_many(range(start, start + len(batch)))
            start += len(batch)
            while len(out) >= size:
                yield store.gather(out[:size])
                out = out[size:]
            if store.rows > 2 * (self.shuffle_buffer + self.read_rows):
                store.compact(buffer.pending() + out)  # frees read batches whose rows have all left
        out += buffer.drain()
        for begin in range(0, len(out), size):
            yield store.gather(out[begin : begin + size])


def _check_options(*, batch_size: int | None, batch_format: str, shuffle_buffer: int, seed: int, rank: int,
                   world_size: int, read_rows: int) -> None:
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be 1 or more (or None for one row at a time), not {batch_size}")
    if batch_format not in BATCH_FORMATS:
        raise InputError(f"batch_format must be one of {', '.join(BATCH_FORMATS)}, not {batch_format!r}")
    if shuffle_buffer < 0:
        raise InputError(f"shuffle_buffer must be 0 or more rows, not {shuffle_buffer}")
    if seed < 0:
        raise InputError(f"seed must be 0 or more, not {seed}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank must be from 0 to world_size - 1 and world_size 1 or more, not rank {rank} of {world_size}")
    if read_rows < 1:
        raise InputError(f"read_rows must be 1 or more, not {read_rows}")


def _as_list(value: Any) -> list[int]:
    """A tag part as ints: a collated tensor or list, or one int (batched items are not collated)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]


# --- torch ------------------------------------------------------------------------------------


def torch_dataset(stream: ParquetStream, *, transform: Callable[[Any], Any] | None = None, tag: bool = True) -> Any:
    """A `torch.utils.data.IterableDataset` reading `stream` with one shard per DataLoader worker.

    Each worker reads stream `get_worker_info().id` of this rank (the stream's own rank and
    world_size). `transform` runs in the worker on each row (or batch). With `tag`, each item is a
    dict and gets STREAM_TAG = (worker, workers, epoch, rows); pass every batch the loop takes to
    `stream.advance(batch)` so `stream.state_dict()` can resume it (Arrow batches become column dicts).
    With batched streams use `DataLoader(dataset, batch_size=None)`.
    """
    return _dataset_class()(stream, transform, tag)


def __getattr__(name: str) -> Any:
    # The dataset class needs torch, so it is made on first use; pickle finds it here by name (spawn workers).
    if name == "StreamDataset":
        return _dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _dataset_class() -> type:
    from torch.utils.data import IterableDataset, get_worker_info

    class StreamDataset(IterableDataset):
        """One ParquetStream stream per DataLoader worker; see `torch_dataset`."""

        def __init__(self, stream: ParquetStream, transform: Callable[[Any], Any] | None, tag: bool) -> None:
            self.stream, self.transform, self.tag = stream, transform, tag

        def __iter__(self) -> Iterator[Any]:
            info = get_worker_info()
            workers = info.num_workers if info is not None else 1
            # After a resume, DataLoader worker 0 serves the stream whose batch was due next, so the
            # round-robin order of batches continues as in the uninterrupted run.
            worker = ((info.id if info is not None else 0) + self.stream._rotation) % workers
            position, items = self.stream.open_stream(worker, workers)
            for item in items:
                rows = 1 if self.stream.batch_size is None else _item_rows(item)
                if self.transform is not None:
                    item = self.transform(item)
                if self.tag:
                    item = _as_dict(item)
                    item[STREAM_TAG] = (worker, workers, position[0], rows)
                yield item

    StreamDataset.__module__, StreamDataset.__qualname__ = __name__, "StreamDataset"
    return StreamDataset


def _item_rows(item: Any) -> int:
    if isinstance(item, dict):
        return len(next(iter(item.values()), []))
    return len(item)


def _as_dict(item: Any) -> dict:
    if isinstance(item, dict):
        return item
    if hasattr(item, "to_pydict"):
        return item.to_pydict()
    raise InputError(f"torch_dataset(tag=True) needs dict items, but the transform returned {type(item).__name__}: "
                     "return a dict or pass tag=False")

