"""`frames_to_dataset`: a folder of clips -> one parquet (or Arrow) table for multi-frame editing.

CLIPS_DIR holds one folder per clip; its images, in natural order (9 before 10), are the frames:
all but the last are the inputs, the last is the target. The instruction comes from the clip's
`instruction.txt`, else from the `instruction` argument. Columns: `key` (the clip folder's name),
`instruction`, `frames` (list of paths relative to the output file, or of image bytes with
`embed`), `target` (the same). Rows are written in row groups, one group in memory at a time, to
a temporary file renamed over the output at the end, so readers never see a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canvaslab.data.folders import read_text
from canvaslab.data.records import is_image_file, natural_key
from canvaslab.errors import InputError

INSTRUCTION_FILE = "instruction.txt"
ROW_GROUP_SIZE = 256
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}
_SHOWN = 5  # offenders named in one error message


@dataclass(frozen=True)
class Clip:
    name: str
    frames: list[Path]  # the inputs, in order
    target: Path
    instruction: str


@dataclass(frozen=True)
class FramesWritten:
    path: Path
    clips: int
    frames: int  # input frames per clip
    embedded: bool


def frames_to_dataset(
    clips_dir: str | Path,
    out: str | Path,
    *,
    embed: bool = False,
    instruction: str | None = None,
    row_group_size: int = ROW_GROUP_SIZE,
) -> FramesWritten:
    """Write the clips under `clips_dir` as one table at `out` (.parquet, or .arrow); see the module docstring."""
    out = Path(out)
    output_format = _output_format(out)
    if row_group_size < 1:
        raise InputError(f"the row group size must be at least 1, not {row_group_size}")
    clips = list_clips(Path(clips_dir), instruction)
    _check_frame_counts(clips)
    _write_atomically(out, lambda file: _write_rows(file, output_format, clips, out.parent, embed, row_group_size))
    return FramesWritten(out, len(clips), len(clips[0].frames), embed)


def _output_format(out: Path) -> str:
    output_format = _FORMATS.get(out.suffix.lower())
    if output_format is None:
        raise InputError(f"cannot write {out}: name the output .parquet (or .arrow for an Arrow file)")
    if out.is_dir():
        raise InputError(f"cannot write {out}: it is a folder; name a .parquet file")
    return output_format


# --- reading clips ----------------------------------------------------------------------------


def list_clips(clips_dir: Path, instruction: str | None = None) -> list[Clip]:
    """The clip folders under `clips_dir`, in natural order, each with its frames and instruction."""
    if not clips_dir.is_dir():
        raise InputError(f"{clips_dir} is not a folder: pass a folder holding one folder of frames per clip")
    folders = sorted((p for p in clips_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: natural_key(p.name))
    if not folders:
        raise InputError(f"{clips_dir} holds no clip folders: put each clip's frames in its own folder")
    clips = [_read_clip(folder, instruction) for folder in folders]
    _check_instructions(clips)
    return clips


def _read_clip(folder: Path, fallback: str | None) -> Clip:
    images = sorted((p for p in folder.iterdir() if p.is_file() and is_image_file(p)), key=lambda p: natural_key(p.name))
    if len(images) < 2:
        raise InputError(
            f"clip '{folder.name}' has {len(images)} image(s); a clip needs at least 2 (the inputs, then the target last)"
        )
    instruction_file = folder / INSTRUCTION_FILE
    if instruction_file.is_file():
        text = read_text(instruction_file)
        if not text:
            raise InputError(f"{instruction_file} is empty: write the clip's instruction in it")
    else:
        text = (fallback or "").strip()
    return Clip(folder.name, images[:-1], images[-1], text)


def _check_instructions(clips: Sequence[Clip]) -> None:
    missing = [clip.name for clip in clips if not clip.instruction]
    if missing:
        raise InputError(
            f"no instruction for clip(s) {_names(missing)}: add {INSTRUCTION_FILE} to each clip folder "
            "or pass --instruction"
        )


def _check_frame_counts(clips: Sequence[Clip]) -> None:
    counts = Counter(len(clip.frames) + 1 for clip in clips)
    if len(counts) == 1:
        return
    usual = counts.most_common(1)[0][0]
    offenders = [f"{clip.name} ({len(clip.frames) + 1})" for clip in clips if len(clip.frames) + 1 != usual]
    raise InputError(
        f"clips must all have the same number of frames: most have {usual}, but {_names(offenders)} differ; "
        "trim or remove those clips"
    )


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


# --- writing ----------------------------------------------------------------------------------


def _schema(embed: bool) -> Any:
    import pyarrow as pa

    image = pa.binary() if embed else pa.string()
    return pa.schema([("key", pa.string()), ("instruction", pa.string()), ("frames", pa.list_(image)), ("target", image)])


def _write_rows(file: Any, output_format: str, clips: Sequence[Clip], base: Path, embed: bool, group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(embed)
    if output_format == "parquet":
        writer = pq.ParquetWriter(file, schema)
    else:
        writer = pa.ipc.new_file(file, schema)
    with writer:
        for first in range(0, len(clips), group):
            table = pa.Table.from_pylist(_rows(clips[first : first + group], base, embed), schema=schema)
            if output_format == "parquet":
                writer.write_table(table, row_group_size=group)
            else:
                writer.write_table(table, max_chunksize=group)


def _rows(clips: Sequence[Clip], base: Path, embed: bool) -> list[dict[str, Any]]:
    def cell(path: Path) -> str | bytes:
        if embed:
            return path.read_bytes()
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()

    return [
        {
            "key": clip.name,
            "instruction": clip.instruction,
            "frames": [cell(path) for path in clip.frames],
            "target": cell(clip.target),
        }
        for clip in clips
    ]


def _write_atomically(out: Path, write: Any) -> None:
    """Run `write(file)` on a hidden temporary file next to `out`, then rename it over `out`."""
    with _temporary_next_to(out) as (file, temporary):
        try:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the rename must not land before the data on a crash
            file.close()
            os.replace(temporary, out)
        except OSError as exc:  # a full disk, a frame that vanished: one line, no half-written output
            where = f" ({exc.filename})" if exc.filename else ""
            raise InputError(f"cannot write {out}: {exc.strerror or exc}{where}") from None


@contextlib.contextmanager
def _temporary_next_to(out: Path) -> Iterator[tuple[Any, Path]]:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
        # O_EXCL: never write into someone else's file; 0o666 lets the umask decide, like a plain new file.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc}") from None
    file = os.fdopen(descriptor, "wb")
    try:
        yield file, temporary
    except BaseException:
        file.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
