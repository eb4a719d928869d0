"""Converters for big training sets, all streaming (rows and files are read and written one at a time):

- `parquet_to_class_folders` / `parquet_to_webdataset`: ImageNet-style parquet (image bytes or
  Hugging Face's {bytes, path} struct + an integer label) -> `OUT/<class name>/<key>.jpg`, or
  WebDataset tar shards (`<key>.jpg`, `<key>.cls`, `<key>.txt` = class name). Both resume: existing
  files (or complete shards) are skipped, and every file appears under its final name only when
  complete (written to a temporary name, then renamed).
- `captions_to_sqlite`: a caption archive (`.tar.gz` of millions of `<key>.txt` files, nested folders
  allowed) -> one sqlite file, table captions(key TEXT PRIMARY KEY, text TEXT), read with tarfile in
  stream mode and inserted in batched transactions; re-running is idempotent (INSERT OR REPLACE).
- `CaptionStore` reads it back; `join_captions` streams image shards (WebDataset tars or parquet),
  attaches each sample's caption by key and counts the keys without one.

Files are fsynced neither per image nor per shard: the rename makes a kill or crash of the process
safe (no partial file under a final name), not a power cut, and it keeps a million small writes fast.
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from canvaslab.data.records import natural_key
from canvaslab.data.streaming import ParquetSource, find_parquet_files, open_parquet, read_batches
from canvaslab.errors import InputError

Progress = Callable[[int, int], None]  # (done, total); total 0 when unknown
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
KEY_MODES = ("auto", "row")
CAPTION_KEYS = ("stem", "path")
_SQLITE_CHUNK = 500  # keys per SELECT ... IN (...): well under sqlite's parameter limit
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-]+")
_UNSAFE_FOLDER = re.compile(r"[\x00-\x1f/\\]+")


# --- class names ------------------------------------------------------------------------------


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names, index = label, from a JSON list (or {label: name} object) or one name per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the classes file {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): give a list of names") from None
        if isinstance(value, dict):
            value = _names_from_mapping(value, path)
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise InputError(f"{path} must hold a JSON list of class names (index = label)")
        names = value
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise InputError(f"{path} lists no class names")
    return names


def _names_from_mapping(value: dict, path: Path) -> list[str]:
    try:
        labels = {int(label): str(name) for label, name in value.items()}
    except ValueError:
        raise InputError(f"{path} maps labels to names, so its keys must be integers") from None
    if sorted(labels) != list(range(len(labels))):
        raise InputError(f"{path} must name every label from 0 to {len(labels) - 1}")
    return [labels[label] for label in range(len(labels))]


def class_names_from_schema(schema: Any, label_column: str) -> list[str] | None:
    """Class names stored in a parquet schema: Hugging Face's ClassLabel feature, if present."""
    metadata = schema.metadata or {}
    raw = metadata.get(b"huggingface")
    if raw is None:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        names = features[label_column].get("names")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return [str(name) for name in names] if isinstance(names, list) and names else None


def class_folders(names: Sequence[str]) -> list[str]:
    """A folder name per class: the name made safe for paths; a name used by two classes gets `_<label>`."""
    safe = [_UNSAFE_FOLDER.sub("_", name).strip().lstrip(".") or f"class_{label}" for label, name in enumerate(names)]
    counts: dict[str, int] = {}
    for name in safe:
        counts[name] = counts.get(name, 0) + 1
    return [f"{name}_{label}" if counts[name] > 1 else name for label, name in enumerate(safe)]


# --- labelled parquet -------------------------------------------------------------------------


@dataclass
class LabelledRow:
    key: str
    image: bytes
    ext: str
    label: int


@dataclass
class ConvertReport:
    out: Path
    rows: int = 0  # rows read
    written: int = 0  # files (folders) or samples (shards) written by this run
    skipped: int = 0  # already there from an earlier run
    unlabelled: int = 0  # label missing or negative (e.g. ImageNet's test split): left out
    shards: int = 0
    classes: list[str] = field(default_factory=list)


class LabelledParquet:
    """Rows (key, image bytes, label) of ImageNet-style parquet files, streamed by record batch."""

    def __init__(self, source: str | Sequence[str], *, image_column: str = "image", label_column: str = "label",
                 key_column: str = "key", keys: str = "auto", classes: str | os.PathLike[str] | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        if keys not in KEY_MODES:
            raise InputError(f"keys must be one of {', '.join(KEY_MODES)}, not {keys!r}")
        self.files = find_parquet_files(source, storage_options)
        self.image_column, self.label_column, self.key_column, self.keys = image_column, label_column, key_column, keys
        first, handle = open_parquet(self.files[0])
        try:
            schema = first.schema_arrow
            self._check_columns(self.files[0], schema.names)
            self.names = read_class_names(classes) if classes is not None else class_names_from_schema(schema, label_column)
            # For the progress bar only: remote footers would cost a request per file before any work.
            local = all(source.fs is None for source in self.files)
            self.total = sum(self._rows_of(source) for source in self.files) if local else 0
        finally:
            if handle is not None:
                handle.close()
        self.folders = class_folders(self.names) if self.names else None

    def _check_columns(self, source: ParquetSource, names: Sequence[str]) -> None:
        missing = [c for c in (self.image_column, self.label_column) if c not in names]
        if missing:
            raise InputError(f"{source.name} has no column(s) {missing}: its columns are {list(names)}; "
                             "name them with --image-column / --label-column")

    @staticmethod
    def _rows_of(source: ParquetSource) -> int:
        parquet, handle = open_parquet(source)
        try:
            return parquet.metadata.num_rows
        finally:
            if handle is not None:
                handle.close()

    def class_name(self, label: int) -> str:
        if self.names is None:
            return str(label)
        if label >= len(self.names):
            raise InputError(f"label {label} has no class name: the class list has {len(self.names)} names")
        return self.names[label]

    def folder(self, label: int) -> str:
        if self.folders is None:
            return f"{label:04d}"  # zero-padded, so sorted folders (as ImageFolder sorts them) follow the labels
        self.class_name(label)  # a label without a name is an error
        return self.folders[label]

    def __iter__(self) -> Iterator[LabelledRow | None]:
        """Each row in file order; None for an unlabelled row. Keys are checked to be unique (the set of
        keys is the only thing that grows with the dataset: ~100 bytes per row)."""
        seen: dict[str, int] = {}
        for number, source in enumerate(self.files):
            for row, where in self._rows(source):
                if row is not None:
                    if row.key in seen:
                        raise InputError(f"{where} has the key {row.key!r} of an earlier row (in {self.files[seen[row.key]].name}): "
                                         "keys name the output files, so they must be unique; use --keys row to name them by file and row")
                    seen[row.key] = number
                yield row

    def _rows(self, source: ParquetSource) -> Iterator[tuple[LabelledRow | None, str]]:
        parquet, handle = open_parquet(source)
        try:
            names = parquet.schema_arrow.names
            self._check_columns(source, names)
            has_key = self.keys == "auto" and self.key_column in names
            columns = [self.image_column, self.label_column] + ([self.key_column] if has_key else [])
            stem, index = _stem(source.name), 0
            for batch in read_batches(parquet, columns, 256):
                values = [batch.column(name).to_pylist() for name in columns]
                for image, label, *key in zip(*values):
                    where = f"{source.name}:{index}"
                    yield self._row(image, label, key[0] if key else None, stem, index, where), where
                    index += 1
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read parquet file {source.name}: {exc}") from None
        finally:
            if handle is not None:
                handle.close()

    def _row(self, image: Any, label: Any, key: Any, stem: str, index: int, where: str) -> LabelledRow | None:
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
            raise InputError(f"row {where} has the label {label!r}: column {self.label_column!r} must hold integers")
        if label is None or label < 0:
            return None
        data, path = (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (image, None)
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise InputError(f"row {where} has no embedded image bytes in column {self.image_column!r}")
        if key is None and self.keys == "auto" and isinstance(path, str) and path:
            key = _stem(path)
        name = safe_key(str(key)) if key is not None else f"{stem}-{index:07d}"
        return LabelledRow(name, bytes(data), image_extension(data), int(label))


def _stem(name: str) -> str:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return safe_key(base.split(".", 1)[0] if not base.startswith(".") else base)


def safe_key(key: str) -> str:
    """A key usable as a file name and a WebDataset key (no dots, no slashes, no spaces)."""
    return _UNSAFE_KEY.sub("_", key).strip("_") or "_"


def image_extension(data: bytes) -> str:
    """The file extension of encoded image bytes, from their signature (jpg when unknown)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    return "jpg"


def parquet_to_class_folders(source: str | Sequence[str], out: str | os.PathLike[str], *, progress: Progress | None = None,
                             **options: Any) -> ConvertReport:
    """`OUT/<class folder>/<key>.<ext>` per labelled row; existing files are skipped (resume).

    `options` go to `LabelledParquet` (image_column, label_column, key_column, keys, classes).
    Writes `OUT/classes.json` ([{label, name, folder}]) last, so the label of each folder is on record.
    """
    rows = LabelledParquet(source, **options)
    out = _prepare_out(out)
    report = ConvertReport(out, classes=list(rows.names or []))
    seen_labels: set[int] = set()
    made: set[str] = set()
    for row in rows:
        report.rows += 1
        if row is None:
            report.unlabelled += 1
        else:
            folder = rows.folder(row.label)
            seen_labels.add(row.label)
            if folder not in made:
                (out / folder).mkdir(parents=True, exist_ok=True)
                made.add(folder)
            path = out / folder / f"{row.key}.{row.ext}"
            if path.exists():
                report.skipped += 1
            else:
                write_file_atomic(path, row.image)
                report.written += 1
        if progress is not None:
            progress(report.rows, rows.total)
    labels = range(len(rows.names)) if rows.names else sorted(seen_labels)
    listing = [{"label": label, "name": rows.class_name(label), "folder": rows.folder(label)} for label in labels]
    write_file_atomic(out / "classes.json", (json.dumps(listing, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return report


def parquet_to_webdataset(source: str | Sequence[str], out: str | os.PathLike[str], *, shard_size: int = 1000,
                          progress: Progress | None = None, **options: Any) -> ConvertReport:
    """WebDataset shards `OUT/shard-000000.tar` of `shard_size` samples: `<key>.<ext>`, `<key>.cls`, `<key>.txt`.

    Shard i holds the i-th `shard_size` labelled rows in file order, so a re-run skips complete shards.
    """
    rows = LabelledParquet(source, **options)
    out = _prepare_out(out)
    report = ConvertReport(out, classes=list(rows.names or []))
    with ShardWriter(out, shard_size) as shards:
        for row in rows:
            report.rows += 1
            if row is None:
                report.unlabelled += 1
            else:
                fields = {row.ext: row.image, "cls": str(row.label).encode(), "txt": rows.class_name(row.label).encode("utf-8")}
                if shards.add(row.key, fields):
                    report.written += 1
                else:
                    report.skipped += 1
            if progress is not None:
                progress(report.rows, rows.total)
    report.shards = shards.shards
    return report


def _prepare_out(out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file: the output must be a folder (new, or one to resume into)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or exc}") from None
    return out


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name in the same folder, then rename: no partial file under `path`."""
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


# --- WebDataset shards ------------------------------------------------------------------------


class ShardWriter:
    """Writes samples into `OUT/shard-NNNNNN.tar`, `shard_size` per shard, each renamed into place when full.

    A shard that already exists under its final name is complete: its samples are counted, not written.
    """

    def __init__(self, out: Path, shard_size: int, prefix: str = "shard") -> None:
        if shard_size < 1:
            raise InputError(f"shard size must be 1 or more samples, not {shard_size}")
        self.out, self.shard_size, self.prefix = out, shard_size, prefix
        self.shards = 0  # shards finished (written or found)
        self._count = 0  # samples in the current shard
        self._tar: tarfile.TarFile | None = None
        self._skipping = False

    def path(self, index: int) -> Path:
        return self.out / f"{self.prefix}-{index:06d}.tar"

    def add(self, key: str, fields: dict[str, bytes]) -> bool:
        """Add one sample (extension -> bytes); False when its shard already exists."""
        if self._count == 0:
            self._start()
        if not self._skipping:
            for extension, data in fields.items():
                member = tarfile.TarInfo(f"{key}.{extension}")
                member.size, member.mtime, member.mode = len(data), 0, 0o644  # same bytes on every run
                self._tar.addfile(member, io.BytesIO(data))
        self._count += 1
        if self._count == self.shard_size:
            self._finish()
        return not self._skipping

    def _start(self) -> None:
        final = self.path(self.shards)
        self._skipping = final.exists()
        if not self._skipping:
            self._temporary = final.with_name(f".{final.name}.partial-{os.getpid()}")
            self._tar = tarfile.open(self._temporary, "w", format=tarfile.PAX_FORMAT)

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            os.replace(self._temporary, self.path(self.shards))
        self.shards += 1
        self._count = 0

    def close(self) -> None:
        if self._count:
            self._finish()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if error is None:
            self.close()
        elif self._tar is not None:  # leave no partial shard behind
            self._tar.close()
            self._temporary.unlink(missing_ok=True)


# --- captions -> sqlite -----------------------------------------------------------------------


@dataclass
class CaptionImport:
    database: Path
    files: int = 0  # caption files read from the archive
    added: int = 0  # keys new to the database
    replaced: int = 0  # keys that were there already (re-run, or the same key twice)
    ignored: int = 0  # other members: folders, non-.txt files, hidden files
    total: int = 0  # keys in the database afterwards


_SCHEMA = "CREATE TABLE IF NOT EXISTS captions (key TEXT PRIMARY KEY, text TEXT) WITHOUT ROWID"


def captions_to_sqlite(archive: str | os.PathLike[str] | IO[bytes], database: str | os.PathLike[str], *,
                       key: str = "stem", batch_rows: int = 10_000, progress: Progress | None = None) -> CaptionImport:
    """Stream the `.txt` members of a tar archive (gz, bz2, xz or none) into `database`.

    `key` "stem": the file name without `.txt` (how image shards name samples); "path": the path inside
    the archive without `.txt`, for archives whose names repeat across folders. The archive is read
    once, front to back (tarfile stream mode, so a pipe works too); at most `batch_rows` captions are in
    memory, each batch committed in one transaction, so an interrupted import keeps what it committed.
    """
    if key not in CAPTION_KEYS:
        raise InputError(f"key must be one of {', '.join(CAPTION_KEYS)}, not {key!r}")
    if batch_rows < 1:
        raise InputError(f"batch_rows must be 1 or more, not {batch_rows}")
    label = archive if isinstance(archive, (str, os.PathLike)) else getattr(archive, "name", "the caption archive")
    report = CaptionImport(Path(database))
    connection = _connect_for_writing(Path(database))
    try:
        before = _count(connection)
        batch: list[tuple[str, str]] = []
        with _open_archive(archive) as stream:
            try:
                for row in _caption_rows(stream, key, report, label):
                    batch.append(row)
                    if len(batch) >= batch_rows:
                        _insert(connection, batch)
                        batch.clear()
                        if progress is not None:
                            progress(report.files, 0)
            finally:
                _insert(connection, batch)  # also what a damaged archive gave before the damage
        report.total = _count(connection)
    finally:
        connection.close()
    report.added = report.total - before
    report.replaced = report.files - report.added
    if progress is not None:
        progress(report.files, report.files)
    return report


def _open_archive(archive: str | os.PathLike[str] | IO[bytes]) -> tarfile.TarFile:
    """A stream-mode TarFile over the archive, decompressed by gzip/bz2/lzma ourselves.

    tarfile's own "r|gz" ends silently at a cut-off gzip stream (half a download imports half the
    captions without a word); the decompressors' file objects raise EOFError there instead.
    """
    try:
        raw = open(archive, "rb") if isinstance(archive, (str, os.PathLike)) else archive  # noqa: SIM115 - closed with the TarFile
        buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
        stream = _decompressed(buffered, buffered.peek(6)[:6])
        return tarfile.open(fileobj=stream, mode="r|")
    except FileNotFoundError:
        raise InputError(f"{archive} does not exist: pass the caption archive (.tar.gz)") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {archive} as a tar archive: {exc}") from None


def _decompressed(stream: IO[bytes], magic: bytes) -> IO[bytes]:
    import bz2
    import gzip
    import lzma

    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if magic[:3] == b"BZh":
        return bz2.BZ2File(stream, mode="rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(stream, mode="rb")
    return stream


def _caption_rows(stream: tarfile.TarFile, key: str, report: CaptionImport, label: Any) -> Iterator[tuple[str, str]]:
    """(key, caption) per `.txt` member, in archive order; other members are counted as ignored."""
    try:
        for member in stream:
            name = member.name.removeprefix("./")
            # "._name.txt" members are macOS metadata that archives made on a Mac carry along
            if not member.isfile() or not name.lower().endswith(".txt") or name.rsplit("/", 1)[-1].startswith("."):
                report.ignored += 1
                continue
            data = stream.extractfile(member).read()
            report.files += 1
            yield _caption_key(name, key), data.decode("utf-8", errors="replace").strip()
    except (tarfile.TarError, EOFError, OSError) as exc:  # zlib errors of a damaged download are OSErrors
        raise InputError(f"{label} ends early or is damaged ({exc}): the captions read so far are saved; "
                         "fix the archive and run again") from None


def _caption_key(name: str, mode: str) -> str:
    path = name[: -len(".txt")]
    return path if mode == "path" else path.rsplit("/", 1)[-1]


def _connect_for_writing(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None)  # transactions are explicit below
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses at most the last batch
        connection.execute(_SCHEMA)
    except sqlite3.Error as exc:
        raise InputError(f"cannot open the caption database {path}: {exc}") from None
    return connection


def _insert(connection: sqlite3.Connection, rows: list[tuple[str, str]]) -> None:
    if rows:
        connection.execute("BEGIN")
        connection.executemany("INSERT OR REPLACE INTO captions (key, text) VALUES (?, ?)", rows)
        connection.execute("COMMIT")


def _count(connection: sqlite3.Connection) -> int:
    return connection.execute("SELECT COUNT(*) FROM captions").fetchone()[0]


class CaptionStore:
    """Read-only access to a caption database; safe to pickle into DataLoader workers (reopens per process)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"caption database {self.path} does not exist: make it with `canvaslab data captions-to-sqlite`")
        self._connection: sqlite3.Connection | None = None
        self._pid = -1
        try:
            self._db().execute("SELECT 1 FROM captions LIMIT 1")
        except sqlite3.Error as exc:
            raise InputError(f"{self.path} is not a caption database ({exc})") from None

    def _db(self) -> sqlite3.Connection:
        if self._connection is None or self._pid != os.getpid():  # a forked worker must not share the parent's
            self._connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._pid = os.getpid()
        return self._connection

    def get(self, key: str) -> str | None:
        row = self._db().execute("SELECT text FROM captions WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """{key: caption} for the keys that have one."""
        keys = list(keys)
        found: dict[str, str] = {}
        for start in range(0, len(keys), _SQLITE_CHUNK):
            chunk = keys[start : start + _SQLITE_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(self._db().execute(f"SELECT key, text FROM captions WHERE key IN ({marks})", chunk).fetchall())
        return found

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return _count(self._db())

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None

    def __enter__(self) -> CaptionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_connection": None, "_pid": -1}


# --- image shards + captions ------------------------------------------------------------------


@dataclass
class ImageSample:
    key: str
    image: bytes
    ext: str
    label: int | None = None
    caption: str | None = None


def find_image_shards(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """WebDataset `.tar` shards and parquet files named by paths, folders or globs, in natural order."""
    import glob as globbing

    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    found: list[str] = []
    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found += sorted((str(p) for p in path.rglob("*") if _is_shard(p.name)), key=natural_key)
        elif path.is_file():
            found.append(text)
        else:
            found += sorted((p for p in globbing.glob(text, recursive=True) if _is_shard(p)), key=natural_key)
    if not found:
        raise InputError(f"no .tar or .parquet image shards found in {', '.join(map(str, items))}")
    return found


def _is_shard(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return not base.startswith(".") and base.endswith((".tar", ".parquet", ".pq"))


def iter_image_samples(shards: Sequence[str], *, image_column: str = "image", label_column: str = "label",
                       key_column: str = "key") -> Iterator[ImageSample]:
    """The samples of WebDataset tars (members grouped by key) and parquet files (keys as the converters make them)."""
    for shard in shards:
        if shard.lower().endswith(".tar"):
            yield from _tar_samples(shard)
        else:
            yield from _parquet_samples(shard, image_column, label_column, key_column)


def _tar_samples(path: str) -> Iterator[ImageSample]:
    """WebDataset convention: consecutive members sharing the name up to the first dot form one sample."""
    current: str | None = None
    fields: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as stream:
            for member in stream:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, extension = base.partition(".")
                sample_key = f"{folder}/{stem}" if folder else stem
                if sample_key != current and current is not None:
                    sample = _tar_sample(current, fields, path)
                    if sample is not None:
                        yield sample
                    fields = {}
                current = sample_key
                fields[extension.lower()] = stream.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"cannot read the shard {path}: {exc}") from None
    if current is not None:
        sample = _tar_sample(current, fields, path)
        if sample is not None:
            yield sample


def _tar_sample(key: str, fields: dict[str, bytes], shard: str) -> ImageSample | None:
    extension = next((ext for ext in IMAGE_EXTENSIONS if ext in fields), None)
    if extension is None:
        return None  # e.g. a caption-only sample
    label = fields.get("cls")
    return ImageSample(key.rsplit("/", 1)[-1], fields[extension], extension,
                       int(label.decode().strip()) if label and label.strip().isdigit() else None)


def _parquet_samples(path: str, image_column: str, label_column: str, key_column: str) -> Iterator[ImageSample]:
    [source] = find_parquet_files(path)
    parquet, handle = open_parquet(source)
    try:
        names = parquet.schema_arrow.names
        if image_column not in names:
            raise InputError(f"{path} has no column {image_column!r}: its columns are {names}")
        columns = [image_column] + [c for c in (label_column, key_column) if c in names]
        stem, index = _stem(source.name), 0
        for batch in read_batches(parquet, columns, 256):
            values = {name: batch.column(name).to_pylist() for name in columns}
            for position, image in enumerate(values[image_column]):
                data, image_path = (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (image, None)
                key = values.get(key_column, [None] * len(batch))[position]
                if key is None:
                    key = _stem(image_path) if isinstance(image_path, str) and image_path else f"{stem}-{index:07d}"
                label = values.get(label_column, [None] * len(batch))[position]
                index += 1
                if data:
                    yield ImageSample(safe_key(str(key)), bytes(data), image_extension(data), label)
    finally:
        if handle is not None:
            handle.close()


class CaptionJoin:
    """Image samples with their caption attached by key; iterate it once, then read `missing_count`.

    Captions are looked up `chunk` keys at a time. Samples without a caption are left out (or kept with
    caption None when `keep_missing`); their keys are counted, and the first `remember` are kept.
    """

    def __init__(self, images: str | Sequence[str], captions: CaptionStore | str | os.PathLike[str], *,
                 keep_missing: bool = False, chunk: int = 256, remember: int = 1000, **columns: str) -> None:
        self.shards = find_image_shards(images)
        self.captions = captions if isinstance(captions, CaptionStore) else CaptionStore(captions)
        self.keep_missing, self.chunk, self.remember, self.columns = keep_missing, chunk, remember, columns
        self.samples = 0
        self.missing_count = 0
        self.missing: list[str] = []

    def __iter__(self) -> Iterator[ImageSample]:
        pending: list[ImageSample] = []
        for sample in iter_image_samples(self.shards, **self.columns):
            pending.append(sample)
            if len(pending) == self.chunk:
                yield from self._attach(pending)
                pending = []
        yield from self._attach(pending)

    def _attach(self, samples: list[ImageSample]) -> Iterator[ImageSample]:
        found = self.captions.get_many(sample.key for sample in samples)
        for sample in samples:
            self.samples += 1
            sample.caption = found.get(sample.key)
            if sample.caption is None:
                self.missing_count += 1
                if len(self.missing) < self.remember:
                    self.missing.append(sample.key)
                if not self.keep_missing:
                    continue
            yield sample


def join_captions(images: str | Sequence[str], captions: CaptionStore | str | os.PathLike[str], **options: Any) -> CaptionJoin:
    """Stream image shards (WebDataset tars or parquet) with captions attached by key; see `CaptionJoin`."""
    return CaptionJoin(images, captions, **options)


def write_captioned_shards(join: CaptionJoin, out: str | os.PathLike[str], *, shard_size: int = 1000,
                           progress: Progress | None = None) -> ConvertReport:
    """Write the joined samples as WebDataset shards: `<key>.<ext>`, `<key>.txt` (caption), `<key>.cls` if labelled."""
    out = _prepare_out(out)
    report = ConvertReport(out)
    with ShardWriter(out, shard_size) as shards:
        for sample in join:
            report.rows += 1
            fields = {sample.ext: sample.image, "txt": (sample.caption or "").encode("utf-8")}
            if sample.label is not None:
                fields["cls"] = str(sample.label).encode()
            if shards.add(sample.key, fields):
                report.written += 1
            else:
                report.skipped += 1
            if progress is not None:
                progress(join.samples, 0)
    report.shards = shards.shards
    return report
