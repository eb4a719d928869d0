"""Table layouts: JSON lines, parquet (one file, a folder or a glob), Arrow files and `datasets` folders.

Every table is read through `Rows`: small columns (captions, keys, path strings) are read whole
when the dataset opens; image columns are read one row at a time when an item is decoded. Parquet
is read by row group (the last two are cached per process), so a sequential pass streams through
the file; Arrow files and `datasets` folders are memory-mapped, so any row is cheap.

An image cell may be encoded bytes, Hugging Face's ``{"bytes", "path"}`` struct, or a path string
relative to the table's own folder. `TableIndex` maps the logical columns (image, caption, mask,
input, frames, key) onto a table's real column names and turns rows into `Record`s.

pyarrow and datasets are imported only when a table is opened, so the CLI's help stays light.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from canvaslab.data.folders import read_jsonl
from canvaslab.data.records import ImageRef, Record
from canvaslab.errors import InputError

# Logical column -> the names tried, in order, when the caller does not name the column.
DEFAULT_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "inpaint": {"image": ("image", "file_name"), "caption": ("text", "caption", "prompt"), "mask": ("mask",)},
    "edit": {
        "image": ("edited_image", "target", "edited"),
        "input": ("input_image", "original_image", "input"),
        "caption": ("edit_prompt", "instruction", "text"),
    },
    "frames": {"frames": ("frames",), "image": ("target", "image"), "caption": ("instruction", "edit_prompt", "text")},
}
REQUIRED_COLUMNS = {"inpaint": ("image",), "edit": ("image", "input", "caption"), "frames": ("frames", "image", "caption")}
KEY_COLUMN = "key"
TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".jsonl": "jsonl"}
_CACHED_ROW_GROUPS = 2


# --- row sources ------------------------------------------------------------------------------


class Rows(ABC):
    """A table read lazily; opened handles are dropped on pickling (DataLoader workers reopen them)."""

    label: str  # how messages name the table

    @property
    @abstractmethod
    def columns(self) -> list[str]: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def column(self, name: str) -> list[Any]:
        """A whole column as Python values; only for small columns (text)."""

    @abstractmethod
    def is_text(self, name: str) -> bool: ...

    @abstractmethod
    def row(self, index: int, names: Sequence[str]) -> dict[str, Any]:
        """The named cells of one row as Python values."""

    @abstractmethod
    def base(self, index: int) -> Path:
        """The folder relative paths in this row are relative to."""

    @abstractmethod
    def row_key(self, index: int) -> str:
        """A stable name for a row when the table has no key column."""


class JsonlRows(Rows):
    """A JSON-lines file, read whole (it is text); paths are relative to its folder."""

    def __init__(self, path: Path) -> None:
        self.path, self.label = path, str(path)
        self._rows = read_jsonl(path)
        self._columns = list(dict.fromkeys(name for row in self._rows for name in row))

    @property
    def columns(self) -> list[str]:
        return self._columns

    def __len__(self) -> int:
        return len(self._rows)

    def column(self, name: str) -> list[Any]:
        return [row.get(name) for row in self._rows]

    def is_text(self, name: str) -> bool:
        return all(isinstance(row.get(name), (str, type(None))) for row in self._rows)

    def row(self, index: int, names: Sequence[str]) -> dict[str, Any]:
        return {name: self._rows[index].get(name) for name in names}

    def base(self, index: int) -> Path:
        return self.path.parent

    def row_key(self, index: int) -> str:
        return f"{self.path.name}:{index + 1}"  # line-like numbering, as editors show it


class ParquetRows(Rows):
    """One or more parquet files with the same columns, read by row group."""

    def __init__(self, files: Sequence[Path], root: Path) -> None:
        import pyarrow.parquet as pq

        self.files, self.root = list(files), root
        self.label = str(root) if len(self.files) > 1 else str(self.files[0])
        self._file_starts, self._group_starts = [], []
        total, schema = 0, None
        for path in self.files:
            meta = _parquet_metadata(pq, path)
            this_schema = meta.schema.to_arrow_schema()
            schema = this_schema if schema is None else schema
            if set(this_schema.names) != set(schema.names):
                raise InputError(
                    f"{path} has columns {this_schema.names} but {self.files[0]} has {schema.names}: "
                    "all parquet files of a dataset need the same columns"
                )
            self._file_starts.append(total)
            starts, rows = [], 0
            for group in range(meta.num_row_groups):
                starts.append(rows)
                rows += meta.row_group(group).num_rows
            self._group_starts.append(starts)
            total += rows
        self._total, self._schema = total, schema
        self._open: dict[int, Any] = {}
        self._cache: OrderedDict[tuple, Any] = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}, "_cache": OrderedDict()}

    @property
    def columns(self) -> list[str]:
        return list(self._schema.names)

    def __len__(self) -> int:
        return self._total

    def column(self, name: str) -> list[Any]:
        import pyarrow.parquet as pq

        values: list[Any] = []
        for path in self.files:
            values += pq.read_table(path, columns=[name]).column(name).to_pylist()
        return values

    def is_text(self, name: str) -> bool:
        return _is_text_type(self._schema.field(name).type)

    def row(self, index: int, names: Sequence[str]) -> dict[str, Any]:
        file_index, local = self._locate(index)
        starts = self._group_starts[file_index]
        group = bisect.bisect_right(starts, local) - 1
        table = self._row_group(file_index, group, tuple(names))
        return table.slice(local - starts[group], 1).to_pylist()[0]

    def base(self, index: int) -> Path:
        return self.files[self._locate(index)[0]].parent

    def row_key(self, index: int) -> str:
        file_index, local = self._locate(index)
        path = self.files[file_index]
        name = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else path.name
        return f"{name}:{local}"

    def _locate(self, index: int) -> tuple[int, int]:
        file_index = bisect.bisect_right(self._file_starts, index) - 1
        return file_index, index - self._file_starts[file_index]

    def _row_group(self, file_index: int, group: int, names: tuple[str, ...]) -> Any:
        cache_key = (file_index, group, names)
        if cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return self._cache[cache_key]
        table = self._file(file_index).read_row_group(group, columns=list(names))
        self._cache[cache_key] = table
        while len(self._cache) > _CACHED_ROW_GROUPS:
            self._cache.popitem(last=False)
        return table

    def _file(self, file_index: int) -> Any:
        import pyarrow.parquet as pq

        if file_index not in self._open:
            self._open[file_index] = pq.ParquetFile(self.files[file_index])
        return self._open[file_index]


def _parquet_metadata(pq: Any, path: Path) -> Any:
    try:
        return pq.read_metadata(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"cannot read parquet file {path}: {_first_line(exc)}") from None


class ArrowRows(Rows):
    """An Arrow IPC file (file or stream format), memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.path, self.label = path, str(path)
        self._table: Any = None
        self._schema = self._read().schema

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None}

    def _read(self) -> Any:
        if self._table is None:
            self._table = _read_arrow(self.path)
        return self._table

    @property
    def columns(self) -> list[str]:
        return list(self._schema.names)

    def __len__(self) -> int:
        return self._read().num_rows

    def column(self, name: str) -> list[Any]:
        return self._read().column(name).to_pylist()

    def is_text(self, name: str) -> bool:
        return _is_text_type(self._schema.field(name).type)

    def row(self, index: int, names: Sequence[str]) -> dict[str, Any]:
        return self._read().select(list(names)).slice(index, 1).to_pylist()[0]

    def base(self, index: int) -> Path:
        return self.path.parent

    def row_key(self, index: int) -> str:
        return f"{self.path.name}:{index}"


def _read_arrow(path: Path) -> Any:
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path), "r")
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()  # the format `datasets` writes
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read Arrow file {path}: {_first_line(exc)}") from None


class DatasetsRows(Rows):
    """A folder written by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict: its train split)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.label = folder, str(folder)
        self._dataset: Any = None
        dataset = self._read()
        self._columns = list(dataset.column_names)
        schema = dataset.features.arrow_schema
        self._text = {name: _is_text_type(schema.field(name).type) for name in self._columns}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}

    def _read(self) -> Any:
        if self._dataset is None:
            self._dataset = _load_from_disk(self.folder).with_format("arrow")
        return self._dataset

    @property
    def columns(self) -> list[str]:
        return self._columns

    def __len__(self) -> int:
        return self._read().num_rows

    def column(self, name: str) -> list[Any]:
        return self._read()[name].to_pylist()

    def is_text(self, name: str) -> bool:
        return self._text[name]

    def row(self, index: int, names: Sequence[str]) -> dict[str, Any]:
        return self._read()[index].select(list(names)).to_pylist()[0]

    def base(self, index: int) -> Path:
        return self.folder

    def row_key(self, index: int) -> str:
        return str(index)


def is_datasets_folder(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _load_from_disk(folder: Path) -> Any:
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"{folder} is a Hugging Face `datasets` folder and reading it needs the datasets package: "
            "pip install datasets"
        ) from None
    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if "train" in loaded:
            return loaded["train"]
        if len(splits) == 1:
            return loaded[splits[0]]
        raise InputError(f"{folder} holds the splits {splits} and none is 'train': pass the split's own folder")
    return loaded


def _is_text_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def open_rows(path: Path) -> Rows:
    """The right `Rows` for one table file (by suffix)."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind == "parquet":
        return ParquetRows([path], path.parent)
    if kind == "arrow":
        return ArrowRows(path)
    if kind == "jsonl":
        return JsonlRows(path)
    raise InputError(f"cannot read {path} as a dataset: use .parquet, .arrow or .jsonl tables, or a folder")


# --- logical columns --------------------------------------------------------------------------


def resolve_columns(rows: Rows, kind: str, columns: Mapping[str, str] | None) -> dict[str, str | None]:
    """Logical column -> the table's column (None: absent, allowed only for optional columns)."""
    defaults = {**DEFAULT_COLUMNS[kind], KEY_COLUMN: (KEY_COLUMN,)}
    chosen = dict(columns or {})
    unknown = set(chosen) - set(defaults)
    if unknown:
        raise InputError(
            f"unknown column role(s) {sorted(unknown)} for a {kind} dataset: use {', '.join(sorted(defaults))}"
        )
    resolved: dict[str, str | None] = {}
    for role, candidates in defaults.items():
        if role in chosen:
            if chosen[role] not in rows.columns:
                raise InputError(f"{rows.label} has no column '{chosen[role]}' (for {role}); it has {rows.columns}")
            resolved[role] = chosen[role]
        else:
            resolved[role] = next((name for name in candidates if name in rows.columns), None)
    for role in REQUIRED_COLUMNS[kind]:
        if resolved[role] is None:
            looked = ", ".join(DEFAULT_COLUMNS[kind][role])
            raise InputError(
                f"{rows.label} has no {role} column (looked for {looked}; it has {rows.columns}): "
                f"name it with columns={{'{role}': NAME}} (--column {role}=NAME)"
            )
    return resolved


def guess_kind_from_columns(names: Sequence[str]) -> str:
    if "frames" in names:
        return "frames"
    if any(name in names for name in DEFAULT_COLUMNS["edit"]["input"]):
        return "edit"
    return "inpaint"


# --- rows -> records --------------------------------------------------------------------------


class TableIndex:
    """The records of a table: captions and keys read at open, image cells read per item."""

    def __init__(self, rows: Rows, kind: str, columns: Mapping[str, str] | None) -> None:
        self.rows, self.kind = rows, kind
        self.names = resolve_columns(rows, kind, columns)
        self._captions = self._read_captions()
        self._keys = self._read_keys()

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self) -> list[str]:
        return list(self._keys)

    def record(self, index: int) -> Record:
        names = self.names
        cells = self.rows.row(index, [name for role in ("image", "mask", "input", "frames") if (name := names.get(role))])
        base = self.rows.base(index)
        key = self._keys[index]
        target = to_ref(cells[names["image"]], base, key)
        mask = to_ref(cells[names["mask"]], base, key) if names.get("mask") else None
        if self.kind == "edit":
            inputs: tuple[ImageRef | None, ...] = (to_ref(cells[names["input"]], base, key),)
        elif self.kind == "frames":
            inputs = tuple(to_ref(value, base, key) for value in (cells[names["frames"]] or []))
        else:
            inputs = ()
        return Record(key=key, caption=self._captions[index], target=target, mask=mask, inputs=inputs)

    def _read_captions(self) -> list[str]:
        name = self.names["caption"]
        if name is None:
            return [""] * len(self.rows)
        return ["" if value is None else str(value).strip() for value in self.rows.column(name)]

    def _read_keys(self) -> list[str]:
        if self.names[KEY_COLUMN] is not None:
            return [str(value) for value in self.rows.column(self.names[KEY_COLUMN])]
        image = self.names["image"]
        if image is not None and self.rows.is_text(image):
            # A path column names each target: the path as written is a stable key.
            paths = self.rows.column(image)
            return [self.rows.row_key(i) if value is None else str(value) for i, value in enumerate(paths)]
        return [self.rows.row_key(i) for i in range(len(self.rows))]


def to_ref(value: Any, base: Path, key: str) -> ImageRef | None:
    """A table cell as an image reference: bytes, a {bytes, path} struct, or a path relative to `base`."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
        if value is None:
            return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return base / value  # an absolute path stays as it is
    raise InputError(
        f"training item '{key}': an image cell holds {type(value).__name__}; "
        "use encoded image bytes, a {bytes, path} struct or a path string"
    )
