"""`check_dataset`: open a training dataset, decode every item, and report what would hurt training.

Errors (training would fail or silently lose data): missing pairs (an edit input without its
edited image or the reverse, a mask or caption without its image), unreadable images, inputs or
frames whose size differs from the target's, rows with another frame count than the first,
duplicate keys. Warnings: images smaller than the training resolution on their short side, empty
captions or instructions, empty masks. Notes: non-RGB images that get converted, masks resized to
their image. The printing is the CLI's business (`cli/data.py`).

Unified data (`kind="unified"`, what `canvaslab train unified` streams and `data mini --kind unified`
writes) is parquet whose files each hold one kind of row, told apart by their columns: t2i (an image
and a caption or class name), lm (text, no image) and mmu (an image and a question and/or answer).
Its rows are read the way the trainer reads them: images decoded, texts the trainer would find empty
reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from canvaslab.data.datasets import TrainingData, guess_kind, open_dataset
from canvaslab.data.records import ImageRef, ItemError, Problem, Record, decode_image, read_header
from canvaslab.errors import InputError

SEVERITIES = ("error", "warning", "note")
# Modes that decode to RGB without losing anything worth mentioning.
_PLAIN_MODES = frozenset({"RGB"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass
class CheckReport:
    """What `check_dataset` found; `ok` is False when any problem is an error."""

    source: str
    kind: str
    items: int
    frames: int
    problems: list[Problem] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # unified: rows per row kind (t2i, lm, mmu)

    def of(self, severity: str) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == severity]

    @property
    def ok(self) -> bool:
        return not self.of("error")

    def counts(self) -> dict[str, int]:
        return {severity: len(self.of(severity)) for severity in SEVERITIES}

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "items": self.items,
            "frames": self.frames,
            "ok": self.ok,
            "counts": self.counts(),
            "problems": [asdict(problem) for problem in self.problems],
            **({"rows": self.rows} if self.rows else {}),
        }


def check_dataset(
    source: str | Path,
    kind: str | None = None,
    *,
    resolution: int = 512,
    columns: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Open `source` (kind guessed when None), decode every item, and collect its problems.

    `progress(done, total)` is called after each item. A source that cannot be opened at all
    raises InputError; everything item-level is reported instead.
    """
    if resolution < 1:
        raise InputError(f"the resolution must be a positive number of pixels, not {resolution}")
    kind = kind or _guess_kind(source, columns)
    if kind == "unified":
        return check_unified(source, resolution=resolution, columns=columns, progress=progress)
    data = open_dataset(source, kind, columns=columns)
    report = CheckReport(str(source), kind, len(data), data.frames, list(data.problems))
    for index in range(len(data)):
        report.problems += check_item(data, index, resolution)
        if progress is not None:
            progress(index + 1, len(data))
    report.problems += duplicate_keys(data.keys())
    return report


def check_item(data: TrainingData, index: int, resolution: int) -> list[Problem]:
    """The problems of one item: header notes, then a full decode (size rules), then size and text warnings."""
    try:
        record = data.record(index)
        problems = _header_notes(record)
        example = data[index]
    except ItemError as exc:
        return [Problem("error", exc.kind, exc.key, exc.detail)]
    except InputError as exc:  # a cell of the wrong type, ...
        return [Problem("error", "unreadable", f"#{index}", str(exc))]
    height, width = example.image.shape[:2]
    if min(width, height) < resolution:
        message = f"{width}x{height} is smaller than {resolution} on its short side; it will be upscaled"
        problems.append(Problem("warning", "small", record.key, message))
    if not record.caption:
        what = "caption" if data.kind == "inpaint" else "instruction"
        problems.append(Problem("warning", "empty-caption", record.key, f"empty {what}"))
    if example.mask is not None and not example.mask.any():
        problems.append(Problem("warning", "empty-mask", record.key, "the mask is all black: nothing to fill"))
    return problems


def _header_notes(record: Record) -> list[Problem]:
    target_size, mode = read_header(_present(record.target, record, "target image"), what="target image", key=record.key)
    notes = _mode_notes(record.key, "target", mode)
    for number, ref in enumerate(record.inputs, start=1):
        _, input_mode = read_header(_present(ref, record, "input image"), what="input image", key=record.key)
        notes += _mode_notes(record.key, f"input {number}", input_mode)
    if record.mask is not None:
        mask_size, _ = read_header(record.mask, what="mask", key=record.key)
        if mask_size != target_size:
            notes.append(
                Problem("note", "mask-resized", record.key,
                        f"the mask is {mask_size[0]}x{mask_size[1]}, the image {target_size[0]}x{target_size[1]}: "
                        "resized (nearest neighbour)")
            )
    return notes


def _present(ref: ImageRef | None, record: Record, what: str) -> ImageRef:
    if ref is None:
        raise ItemError("missing-pair", record.key, f"the row names no {what}")
    return ref


def _mode_notes(key: str, what: str, mode: str) -> list[Problem]:
    if mode in _PLAIN_MODES:
        return []
    change = "alpha dropped" if mode in _ALPHA_MODES else "converted to RGB"
    return [Problem("note", "mode", key, f"{what} is {mode}: {change}")]


def duplicate_keys(keys: Sequence[str]) -> list[Problem]:
    return [
        Problem("error", "duplicate-key", key, f"the key appears {count} times; keys must be unique")
        for key, count in Counter(keys).items()
        if count > 1
    ]


# --- unified rows -----------------------------------------------------------------------------

ROW_KINDS = ("t2i", "lm", "mmu")
# role -> column, the unified trainer's defaults (train/unified_config.py, data.*_column)
UNIFIED_COLUMNS = {"image": "image", "caption": "caption", "class": "class_name", "text": "text",
                   "question": "question", "answer": "answer", "key": "key"}
_UNIFIED_ONLY_ROLES = frozenset({"class", "text", "question", "answer"})  # no other kind has these roles


def unified_image_ref(value: object) -> ImageRef | None:
    """A unified row's image cell as the trainer reads it: encoded bytes, a Hugging Face {bytes, path}
    struct, or a path (relative to the working directory)."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        return Path(value)
    return value  # type: ignore[return-value]  # bytes, None, or a wrong type that decoding reports


def row_kind(names: Sequence[str], columns: Mapping[str, str]) -> str | None:
    """Which unified rows a table with these column names holds (None: none)."""
    present = {role for role, name in columns.items() if name in names}
    if "image" in present and present & {"question", "answer"}:
        return "mmu"
    if "image" in present:
        return "t2i"
    if "text" in present:
        return "lm"
    return None


def unified_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    unknown = sorted(set(columns or {}) - set(UNIFIED_COLUMNS))
    if unknown:
        raise InputError(f"unknown column role {unknown[0]!r} for unified data; use {', '.join(UNIFIED_COLUMNS)}")
    return {**UNIFIED_COLUMNS, **(columns or {})}


def check_unified(
    source: str | Path,
    *,
    resolution: int = 512,
    columns: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check the parquet files of `source` (a file, folder, glob or URL) as unified training rows."""
    from canvaslab.data.streaming import find_parquet_files, open_parquet, read_batches

    roles = unified_columns(columns)
    plan = []
    for file in find_parquet_files(str(source)):
        parquet, handle = open_parquet(file)
        try:
            names = parquet.schema_arrow.names
            rows = parquet.metadata.num_rows
        finally:
            if handle is not None:
                handle.close()
        kind = row_kind(names, roles)
        if kind is None:
            raise InputError(
                f"{file.name} has columns {names}: not a t2i ({roles['image']} + {roles['caption']} or {roles['class']}), "
                f"lm ({roles['text']}) or mmu ({roles['image']} + {roles['question']}/{roles['answer']}) table; "
                "name the columns with --column ROLE=NAME"
            )
        plan.append((file, kind, rows, [name for name in roles.values() if name in names]))
    total = sum(rows for _, _, rows, _ in plan)
    report = CheckReport(str(source), "unified", total, 0, rows={kind: 0 for kind in ROW_KINDS})
    keys: dict[str, list[str]] = {kind: [] for kind in ROW_KINDS}
    done = 0
    for file, kind, _, present in plan:
        parquet, handle = open_parquet(file)
        try:
            index = 0
            for batch in read_batches(parquet, present, 256):
                for row in batch.to_pylist():
                    key = row.get(roles["key"])
                    if key is not None:
                        keys[kind].append(str(key))
                    name = f"{kind}:{key if key is not None else f'{file.name}:{index}'}"
                    report.problems += _check_row(kind, row, roles, name, resolution)
                    report.rows[kind] += 1
                    index += 1
                    done += 1
                    if progress is not None:
                        progress(done, total)
        finally:
            if handle is not None:
                handle.close()
    for kind, found in keys.items():
        # Keys only name rows (in reports and `log.samples`); a repeated one usually means a file read twice.
        report.problems += [Problem("warning", p.kind, f"{kind}:{p.key}", p.message) for p in duplicate_keys(found)]
    report.rows = {kind: count for kind, count in report.rows.items() if count}
    return report


def _check_row(kind: str, row: Mapping[str, object], roles: Mapping[str, str], name: str, resolution: int) -> list[Problem]:
    def text(role: str) -> str:
        value = row.get(roles[role])
        return value.strip() if isinstance(value, str) else ""

    problems = [] if kind == "lm" else _image_problems(unified_image_ref(row.get(roles["image"])), name, resolution)
    if kind == "t2i" and not (text("caption") or text("class")):
        problems.append(Problem("warning", "empty-caption", name, "no caption and no class name: an unconditional row"))
    if kind == "lm" and not text("text"):
        problems.append(Problem("warning", "empty-text", name, "empty text"))
    if kind == "mmu" and not (text("answer") or text("caption")):
        problems.append(Problem("warning", "empty-text", name, "no answer (or caption): nothing to learn but <|eot|>"))
    return problems


def _image_problems(ref: ImageRef | None, name: str, resolution: int) -> list[Problem]:
    try:
        if ref is None:
            raise ItemError("missing-pair", name, "the row names no image")
        if not isinstance(ref, (bytes, bytearray, Path)):
            raise ItemError("unreadable", name, f"the image cell holds a {type(ref).__name__}, not bytes or a path")
        (width, height), mode = read_header(ref, what="image", key=name)
        problems = _mode_notes(name, "image", mode)
        decode_image(ref, what="image", key=name)
    except ItemError as exc:
        return [Problem("error", exc.kind, exc.key, exc.detail)]
    if min(width, height) < resolution:
        message = f"{width}x{height} is smaller than {resolution} on its short side; it will be upscaled"
        problems.append(Problem("warning", "small", name, message))
    return problems


def _guess_kind(source: str | Path, columns: Mapping[str, str] | None) -> str:
    """`guess_kind`, plus unified data: tables of text without images, or of questions and answers."""
    if columns and set(columns) & _UNIFIED_ONLY_ROLES:
        return "unified"
    from canvaslab.data.streaming import find_parquet_files, open_parquet

    try:
        files = find_parquet_files(str(source))
        kinds = set()
        for file in files:
            parquet, handle = open_parquet(file)
            kinds.add(row_kind(parquet.schema_arrow.names, UNIFIED_COLUMNS))
            if handle is not None:
                handle.close()
    except InputError:  # not parquet (an image folder, jsonl, Arrow, ...): another kind's layout
        return guess_kind(source, columns)
    if kinds & {"lm", "mmu"} and None not in kinds:
        return "unified"
    return guess_kind(source, columns)
