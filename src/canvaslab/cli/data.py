"""`canvaslab data check|mini|frames-to-dataset|parquet-to-classes|captions-to-sqlite|join-captions`:
validate, generate and convert training data.

The data modules import pyarrow and `datasets` only when a table is read or written, so
`canvaslab data --help` stays as light as the rest of the CLI.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from canvaslab.cli import console
from canvaslab.errors import InputError

if TYPE_CHECKING:
    from canvaslab.data.check import CheckReport

app = typer.Typer(
    help="Training data: check a dataset, write a tiny synthetic one, convert video clips, labelled parquet and caption archives.",
    no_args_is_help=True,
)

SHOWN_PROBLEMS = 50  # rows of the problem table; --json has them all
_STYLES = {"error": "red", "warning": "yellow", "note": "cyan"}


class Kind(str, enum.Enum):
    inpaint = "inpaint"
    edit = "edit"
    frames = "frames"
    unified = "unified"


class MiniKind(str, enum.Enum):
    inpaint = "inpaint"
    edit = "edit"
    frames = "frames"
    unified = "unified"
    all = "all"


@app.command("check")
def check(
    source: Annotated[str, typer.Argument(help="dataset folder, .parquet/.arrow/.jsonl file or parquet glob", show_default=False)],
    kind: Annotated[Optional[Kind], typer.Option("--kind", help="dataset kind; unified: the t2i/lm/mmu parquet rows of `train unified` \\[default: guessed from the layout]")] = None,
    resolution: Annotated[int, typer.Option("--resolution", min=1, help="warn about images smaller than this on their short side")] = 512,
    column: Annotated[Optional[list[str]], typer.Option("--column", metavar="ROLE=NAME", help="the table column for image, caption, mask, input, frames or key (unified: image, caption, class, text, question, answer, key)")] = None,
) -> None:
    """Decode every item and report missing pairs, unreadable images, size mismatches and more; exit 1 on errors."""
    with console.friendly_errors():
        from canvaslab.data.check import check_dataset

        columns = parse_columns(column or [])
        with _progress() as advance:
            report = check_dataset(source, kind.value if kind else None, resolution=resolution, columns=columns, progress=advance)
        if console.settings.json:
            console.emit_json(report.to_dict())
        else:
            _print_report(report)
        if not report.ok:
            raise typer.Exit(1)


def parse_columns(pairs: list[str]) -> dict[str, str]:
    """['image=img', ...] -> {'image': 'img'}; the roles are checked when the dataset opens."""
    columns = {}
    for pair in pairs:
        role, sep, name = pair.partition("=")
        if not sep or not role.strip() or not name.strip():
            raise InputError(f"--column takes ROLE=NAME (e.g. caption=prompt), not {pair!r}")
        columns[role.strip()] = name.strip()
    return columns


def _print_report(report: CheckReport) -> None:
    problems = report.problems
    if problems:
        table = Table("severity", "kind", "item", "problem", title=f"{report.kind} dataset {report.source}")
        for problem in problems[:SHOWN_PROBLEMS]:
            style = _STYLES[problem.severity]
            table.add_row(f"[{style}]{problem.severity}[/]", problem.kind, problem.key, problem.message)
        console.out.print(table)
        if len(problems) > SHOWN_PROBLEMS:
            console.out.print(f"... and {len(problems) - SHOWN_PROBLEMS} more (--json lists them all)", markup=False)
    counts = report.counts()
    verdict = "[green]ok[/]" if report.ok else "[red]not ready for training[/]"
    if report.kind == "unified":
        what = f"{report.items} unified rows ({', '.join(f'{kind} {count}' for kind, count in report.rows.items())})"
    else:
        frames = f", {report.frames} input frame(s) each" if report.kind == "frames" else ""
        what = f"{report.items} {report.kind} items{frames}"
    console.out.print(
        f"{what}: {counts['error']} error(s), {counts['warning']} warning(s), {counts['note']} note(s) — {verdict}"
    )


@app.command("mini")
def mini(
    out: Annotated[Path, typer.Argument(help="new (or empty) folder to write into", show_default=False)],
    kind: Annotated[MiniKind, typer.Option("--kind", help="which layouts to write")] = MiniKind.all,
    count: Annotated[int, typer.Option("--count", min=1, max=10_000, help="items per layout")] = 8,
    size: Annotated[int, typer.Option("--size", min=16, max=2048, help="short side of the images in pixels")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="random seed: the same seed writes the same pixels")] = 0,
    frames: Annotated[int, typer.Option("--frames", min=1, max=64, help="input frames per clip (frames layout)")] = 3,
) -> None:
    """Write a tiny synthetic dataset of each supported layout, for smoke runs of the trainer."""
    with console.friendly_errors():
        from canvaslab.data.mini import write_mini

        written = write_mini(out, kind=kind.value, count=count, size=size, seed=seed, frames=frames)
        if console.settings.json:
            console.emit_json([{"kind": d.kind, "layout": d.layout, "path": str(d.path), "items": d.items} for d in written])
            return
        for dataset in written:
            console.info(f"{dataset.layout}: {dataset.items} {dataset.kind} items")
            print(dataset.path)


@app.command("frames-to-dataset")
def frames_to_dataset(
    clips_dir: Annotated[Path, typer.Argument(help="folder with one folder of frames (00.jpg ... NN.jpg) per clip", show_default=False)],
    out: Annotated[Path, typer.Argument(help="the .parquet (or .arrow) file to write", show_default=False)],
    embed: Annotated[bool, typer.Option("--embed/--no-embed", help="store the image bytes (a self-contained file) instead of relative paths")] = False,
    instruction: Annotated[Optional[str], typer.Option("--instruction", help="instruction for clips without an instruction.txt")] = None,
) -> None:
    """Convert clips (the last frame is the target, the others the inputs) into a frames dataset."""
    with console.friendly_errors():
        from canvaslab.data.frames import frames_to_dataset as convert

        written = convert(clips_dir, out, embed=embed, instruction=instruction)
        if console.settings.json:
            console.emit_json({"path": str(written.path), "clips": written.clips, "frames": written.frames, "embedded": written.embedded})
            return
        stored = "embedded images" if written.embedded else "paths relative to the file"
        console.info(f"{written.clips} clips, {written.frames} input frames + 1 target each, {stored}")
        print(written.path)


class ClassesFormat(str, enum.Enum):
    folders = "folders"
    webdataset = "webdataset"


class KeyMode(str, enum.Enum):
    auto = "auto"
    row = "row"


class CaptionKey(str, enum.Enum):
    stem = "stem"
    path = "path"


@app.command("parquet-to-classes")
def parquet_to_classes(
    source: Annotated[str, typer.Argument(help="parquet file, folder, glob or fsspec URL (image + integer label)", show_default=False)],
    out: Annotated[Path, typer.Argument(help="folder to write into (an interrupted run resumes there)", show_default=False)],
    output_format: Annotated[ClassesFormat, typer.Option("--format", help="class folders OUT/<class>/<key>.jpg or WebDataset tar shards")] = ClassesFormat.folders,
    classes: Annotated[Optional[Path], typer.Option("--classes", help="class names: JSON list or one per line \\[default: the parquet's Hugging Face features, else label numbers]")] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="samples per WebDataset shard")] = 1000,
    image_column: Annotated[str, typer.Option("--image-column", help="column of image bytes or {bytes, path} structs")] = "image",
    label_column: Annotated[str, typer.Option("--label-column", help="column of integer labels")] = "label",
    key_column: Annotated[str, typer.Option("--key-column", help="column naming each sample, when the table has one")] = "key",
    keys: Annotated[KeyMode, typer.Option("--keys", help="auto: key column, else image path stem, else <file>-<row>; row: always <file>-<row>")] = KeyMode.auto,
) -> None:
    """Convert ImageNet-style parquet into class folders or WebDataset shards named by class."""
    with console.friendly_errors():
        from canvaslab.data import convert

        options = {"classes": classes, "image_column": image_column, "label_column": label_column,
                   "key_column": key_column, "keys": keys.value}
        with _progress("converting") as advance:
            if output_format is ClassesFormat.folders:
                report = convert.parquet_to_class_folders(source, out, progress=advance, **options)
            else:
                report = convert.parquet_to_webdataset(source, out, shard_size=shard_size, progress=advance, **options)
        shards = f" in {report.shards} shards" if output_format is ClassesFormat.webdataset else ""
        names = f"{len(report.classes)} named classes" if report.classes else "no class names (folders are label numbers)"
        _summary(report.out, {"out": str(report.out), "rows": report.rows, "written": report.written, "skipped": report.skipped,
                              "unlabelled": report.unlabelled, "shards": report.shards, "classes": len(report.classes)},
                 f"{report.rows} rows: {report.written} written{shards}, {report.skipped} already there, "
                 f"{report.unlabelled} unlabelled left out; {names}")


@app.command("captions-to-sqlite")
def captions_to_sqlite(
    archive: Annotated[Path, typer.Argument(help="tar archive (.tar.gz, .tar.xz, .tar) of <key>.txt caption files", show_default=False)],
    database: Annotated[Path, typer.Argument(help="sqlite file to create or add to", show_default=False)],
    key: Annotated[CaptionKey, typer.Option("--key", help="stem: file name without .txt (as image shards name samples); path: path in the archive")] = CaptionKey.stem,
    batch_rows: Annotated[int, typer.Option("--batch-rows", min=1, help="captions per transaction")] = 10_000,
) -> None:
    """Stream a caption archive into an on-disk key-value store (sqlite), without loading it in memory."""
    with console.friendly_errors():
        from canvaslab.data.convert import captions_to_sqlite as load

        with _progress("reading captions") as advance:
            report = load(archive, database, key=key.value, batch_rows=batch_rows, progress=advance)
        _summary(report.database, {"database": str(report.database), "files": report.files, "added": report.added,
                                   "replaced": report.replaced, "ignored": report.ignored, "total": report.total},
                 f"{report.files} captions read: {report.added} new keys, {report.replaced} replaced, "
                 f"{report.ignored} other members ignored; {report.total} keys in the database")


@app.command("join-captions")
def join_captions(
    images: Annotated[str, typer.Argument(help="image shards: WebDataset .tar files or parquet (file, folder or glob)", show_default=False)],
    captions: Annotated[Path, typer.Argument(help="sqlite file from captions-to-sqlite", show_default=False)],
    out: Annotated[Path, typer.Argument(help="folder for the captioned WebDataset shards", show_default=False)],
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="samples per shard")] = 1000,
    keep_missing: Annotated[bool, typer.Option("--keep-missing", help="keep samples without a caption (empty .txt)")] = False,
) -> None:
    """Attach captions to image shards by key and write captioned WebDataset shards; report keys without one."""
    with console.friendly_errors():
        from canvaslab.data import convert

        join = convert.join_captions(images, captions, keep_missing=keep_missing)
        with _progress("joining") as advance:
            report = convert.write_captioned_shards(join, out, shard_size=shard_size, progress=advance)
        examples = f" (e.g. {', '.join(join.missing[:5])})" if join.missing else ""
        _summary(report.out, {"out": str(report.out), "samples": join.samples, "written": report.written,
                              "skipped": report.skipped, "shards": report.shards, "missing": join.missing_count,
                              "missing_keys": join.missing},
                 f"{join.samples} samples: {report.written} written in {report.shards} shards, {report.skipped} already "
                 f"there, {join.missing_count} without a caption{examples}")


def _summary(path: Path, data: dict, line: str) -> None:
    """--json: the figures on stdout; else the line on stderr and the output's path on stdout (for scripts)."""
    if console.settings.json:
        console.emit_json(data)
        return
    console.info(line)
    print(path)


class _progress:
    """A progress bar on stderr while items are processed; silent with --quiet or --json."""

    def __init__(self, label: str = "checking") -> None:
        self.label = label

    def __enter__(self) -> object:
        self.bar = Progress(
            TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console.err, transient=True,
            disable=console.settings.quiet or console.settings.json or not console.err.is_terminal,
        )
        self.bar.start()
        self.task = self.bar.add_task("check", total=None)

        def advance(done: int, total: int) -> None:
            self.bar.update(self.task, completed=done, total=total or None)

        return advance

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
