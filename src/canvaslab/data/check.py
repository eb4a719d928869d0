"""`check_dataset`: open a training dataset, decode every item, and report what would hurt training.

Errors (training would fail or silently lose data): missing pairs (an edit input without its
edited image or the reverse, a mask or caption without its image), unreadable images, inputs or
frames whose size differs from the target's, rows with another frame count than the first,
duplicate keys. Warnings: images smaller than the training resolution on their short side, empty
captions or instructions, empty masks. Notes: non-RGB images that get converted, masks resized to
their image. The printing is the CLI's business (`cli/data.py`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from canvaslab.data.datasets import TrainingData, guess_kind, open_dataset
from canvaslab.data.records import ImageRef, ItemError, Problem, Record, read_header
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
    kind = kind or guess_kind(source, columns)
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
