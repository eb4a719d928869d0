"""`canvaslab data check|mini|frames-to-dataset`: validate, generate and convert training data.

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

app = typer.Typer(help="Training data: check a dataset, write a tiny synthetic one, convert video clips.", no_args_is_help=True)

SHOWN_PROBLEMS = 50  # rows of the problem table; --json has them all
_STYLES = {"error": "red", "warning": "yellow", "note": "cyan"}


class Kind(str, enum.Enum):
    inpaint = "inpaint"
    edit = "edit"
    frames = "frames"


class MiniKind(str, enum.Enum):
    inpaint = "inpaint"
    edit = "edit"
    frames = "frames"
    all = "all"


@app.command("check")
def check(
    source: Annotated[str, typer.Argument(help="dataset folder, .parquet/.arrow/.jsonl file or parquet glob", show_default=False)],
    kind: Annotated[Optional[Kind], typer.Option("--kind", help="dataset kind \\[default: guessed from the layout]")] = None,
    resolution: Annotated[int, typer.Option("--resolution", min=1, help="warn about images smaller than this on their short side")] = 512,
    column: Annotated[Optional[list[str]], typer.Option("--column", metavar="ROLE=NAME", help="the table column for image, caption, mask, input, frames or key")] = None,
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
    frames = f", {report.frames} input frame(s) each" if report.kind == "frames" else ""
    console.out.print(
        f"{report.items} {report.kind} items{frames}: {counts['error']} error(s), {counts['warning']} warning(s), "
        f"{counts['note']} note(s) — {verdict}"
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


class _progress:
    """A progress bar on stderr while items are decoded; silent with --quiet or --json."""

    def __enter__(self) -> object:
        self.bar = Progress(
            TextColumn("checking"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console.err, transient=True,
            disable=console.settings.quiet or console.settings.json or not console.err.is_terminal,
        )
        self.bar.start()
        self.task = self.bar.add_task("check", total=None)

        def advance(done: int, total: int) -> None:
            self.bar.update(self.task, completed=done, total=total)

        return advance

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
