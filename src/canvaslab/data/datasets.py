"""Training datasets: `open_dataset(source, kind)` finds the layout and gives a map-style `TrainingData`.

Kinds: ``inpaint`` (target + caption + optional user mask), ``edit`` (input image + instruction ->
edited image, InstructPix2Pix triplets) and ``frames`` (N input frames + instruction -> target frame).
Layouts, detected from `source` (see docs/data.md for trees):

- inpaint: an image folder (captions from `<stem>.txt` or a root metadata.jsonl, masks from
  `masks/<same path>` or `<stem>_mask.<ext>`); parquet / Arrow / jsonl tables; a `datasets` folder.
- edit: a folder with metadata.jsonl (input_image, edited_image, edit_prompt); an `input/` +
  `edited/` folder; parquet / Arrow tables; a `datasets` folder.
- frames: parquet / Arrow written by `canvaslab data frames-to-dataset`.

Opening lists files and reads text columns only; pixels are decoded per item in `__getitem__`, so
the trainer's DataLoader workers do the decoding. No torch here: the trainer wraps this itself.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from canvaslab.data import folders, tables
from canvaslab.data.records import KINDS, Example, Problem, Record, decode_record, natural_key, read_header
from canvaslab.errors import InputError

__all__ = ["Example", "TrainingData", "guess_kind", "open_dataset"]

_GLOB_CHARACTERS = frozenset("*?[")


class _Index(Protocol):
    def __len__(self) -> int: ...
    def keys(self) -> list[str]: ...
    def record(self, index: int) -> Record: ...


class _RecordList:
    """The index of a folder layout: all records built at open (paths and text only)."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._records = list(records)

    def __len__(self) -> int:
        return len(self._records)

    def keys(self) -> list[str]:
        return [record.key for record in self._records]

    def record(self, index: int) -> Record:
        return self._records[index]


class TrainingData:
    """A map-style training dataset: `data[i]` decodes item i into an `Example`.

    `frames` is the number of input images per item (0 inpaint, 1 edit, N frames); `problems` are
    what indexing found without decoding (missing pairs, masks without images), for `data check`.
    """

    def __init__(self, kind: str, source: str, index: _Index, problems: Sequence[Problem], frames: int) -> None:
        self.kind, self.source, self.frames = kind, source, frames
        self.problems = list(problems)
        self._index = index
        self._sizes: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Example:
        return decode_record(self.record(index), self.kind, self.frames)

    def __repr__(self) -> str:
        return f"TrainingData(kind={self.kind!r}, source={self.source!r}, items={len(self)}, frames={self.frames})"

    def record(self, index: int) -> Record:
        """Where item `index`'s images are, without decoding them."""
        count = len(self._index)
        if not -count <= index < count:
            raise IndexError(f"item {index} is out of range for a dataset of {count}")
        return self._index.record(index % count)

    def keys(self) -> list[str]:
        return self._index.keys()

    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every target as decoded (EXIF rotation applied), read from headers; cached."""
        if self._sizes is None:
            self._sizes = [self._target_size(i) for i in range(len(self))]
        return list(self._sizes)

    def _target_size(self, index: int) -> tuple[int, int]:
        record = self.record(index)
        if record.target is None:
            raise InputError(f"training item '{record.key}': the row names no target image")
        return read_header(record.target, what="target image", key=record.key)[0]


def open_dataset(source: str | Path, kind: str, *, columns: Mapping[str, str] | None = None) -> TrainingData:
    """Open a training dataset of `kind` ("inpaint" | "edit" | "frames") at `source`.

    `source` is a folder, a table file (.parquet, .arrow, .jsonl) or a glob of parquet files.
    `columns` maps logical columns (image, caption, mask, input, frames, key) to a table's names.
    Nothing is decoded; an unusable source is one InputError.
    """
    if kind not in KINDS:
        raise InputError(f"unknown dataset kind {kind!r}: use one of {', '.join(KINDS)}")
    index, problems = _open_index(source, kind, columns)
    if len(index) == 0:
        first = f" (first problem: {problems[0].message})" if problems else ""
        raise InputError(f"no training items found in {source}{first}")
    frames = {"inpaint": 0, "edit": 1}.get(kind)
    if frames is None:  # the first row sets the count; `decode_record` holds every other row to it
        frames = len(index.record(0).inputs)
        if frames == 0:
            raise InputError(f"the first row of {source} has no input frames: a frames row needs at least one")
    return TrainingData(kind, str(source), index, problems, frames)


def guess_kind(source: str | Path, columns: Mapping[str, str] | None = None) -> str:
    """The kind a source most likely holds: from a table's column names, or from folder structure."""
    if columns and "frames" in columns:
        return "frames"
    if columns and "input" in columns:
        return "edit"
    rows = _table_rows(source)
    if rows is not None:
        return tables.guess_kind_from_columns(rows.columns)
    folder = Path(source)
    if folder.is_dir() and folders.is_edit_folder(folder):
        return "edit"
    return "inpaint"


# --- layout detection -------------------------------------------------------------------------


def _open_index(source: str | Path, kind: str, columns: Mapping[str, str] | None) -> tuple[_Index, list[Problem]]:
    rows = _table_rows(source, kind=kind, columns=columns)
    if rows is not None:
        return tables.TableIndex(rows, kind, columns), []
    folder = Path(source)
    if kind == "edit" and folders.is_edit_folder(folder):
        records, problems = folders.index_edit_folder(folder)
        return _RecordList(records), problems
    if kind == "inpaint":
        records, problems = folders.index_inpaint_folder(folder)
        return _RecordList(records), problems
    raise InputError(_not_a_dataset(folder, kind))


def _table_rows(
    source: str | Path, *, kind: str | None = None, columns: Mapping[str, str] | None = None
) -> tables.Rows | None:
    """The table `source` names (file, glob, folder of tables, `datasets` folder); None for an image folder."""
    text = str(source)
    path = Path(source)
    if not path.exists() and _GLOB_CHARACTERS & set(text):
        return _glob_rows(text)
    if not path.exists():
        raise InputError(f"dataset {source} does not exist: pass a folder, a .parquet/.arrow/.jsonl file or a glob")
    if path.is_file():
        return tables.open_rows(path)
    if tables.is_datasets_folder(path):
        return tables.DatasetsRows(path)
    metadata = path / folders.METADATA
    if kind in (None, "edit") and metadata.is_file():
        rows = tables.JsonlRows(metadata)
        # A metadata.jsonl naming input images is the edit-triplet layout; otherwise it only holds captions.
        if tables.guess_kind_from_columns(rows.columns) == "edit" or (columns and "input" in columns):
            return rows
    return _folder_tables(path, kind)


def _folder_tables(folder: Path, kind: str | None) -> tables.Rows | None:
    found = _table_files(folder)
    parquet = [path for path in found if path.suffix.lower() in (".parquet", ".pq")]
    arrow = [path for path in found if path.suffix.lower() == ".arrow"]
    if not parquet and not arrow:
        return None
    if kind == "inpaint" and folders.image_files(folder):
        raise InputError(
            f"{folder} holds both images and table files: pass the .parquet file(s) or a folder of images only"
        )
    if kind == "edit" and folders.is_edit_folder(folder):
        return None
    if parquet:
        return tables.ParquetRows(parquet, folder)
    if len(arrow) > 1:
        raise InputError(f"{folder} holds {len(arrow)} Arrow files: pass one of them")
    return tables.ArrowRows(arrow[0])


def _glob_rows(pattern: str) -> tables.Rows:
    files = sorted((Path(p) for p in glob.glob(pattern, recursive=True)), key=lambda p: natural_key(str(p)))
    files = [path for path in files if path.is_file()]
    if not files:
        raise InputError(f"no files match {pattern}")
    suffixes = {tables.TABLE_SUFFIXES.get(path.suffix.lower()) for path in files}
    if suffixes != {"parquet"}:
        raise InputError(f"{pattern} must match parquet files only (a glob of several tables is read as one dataset)")
    return tables.ParquetRows(files, Path(_glob_root(pattern)))


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard, so keys name files relative to it."""
    head = pattern
    while _GLOB_CHARACTERS & set(head):
        head = str(Path(head).parent)
    return head


def _table_files(folder: Path) -> list[Path]:
    """Parquet and Arrow files under `folder` (hidden ones skipped), in natural order of their paths."""
    found = [path for path in folders.walk_files(folder) if path.suffix.lower() in (".parquet", ".pq", ".arrow")]
    return sorted(found, key=lambda path: natural_key(path.relative_to(folder).as_posix()))


def _not_a_dataset(folder: Path, kind: str) -> str:
    if kind == "edit":
        return (
            f"{folder} is not an edit dataset: expected a metadata.jsonl with input_image/edited_image/edit_prompt, "
            "input/ and edited/ folders, parquet files or a `datasets` folder"
        )
    return (
        f"{folder} is not a frames dataset: convert a folder of clips with `canvaslab data frames-to-dataset`, "
        "then pass the .parquet file"
    )
