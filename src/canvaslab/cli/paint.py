"""`canvaslab inpaint` and `canvaslab outpaint`: one image, or whole folders with --images."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from canvaslab.cli import console
from canvaslab.cli.options import command
from canvaslab.core.image import DEFAULT_MAX_PIXELS, load_image, save_image
from canvaslab.errors import InputError
from canvaslab.tasks.batch import (
    BatchItem, launcher_shard, make_out_folder, pair_folder, parse_shard, refuse_input_as_output, run_batch, shard,
)
from canvaslab.tasks.render import OutputSpec, render
from canvaslab.tasks.result import MetadataMode, recipe_to_write
from canvaslab.tasks.xyz import base_request, parse_axis, render_xyz
from canvaslab.tasks.requests import REQUESTS, InpaintRequest, MaskMode, OutpaintRequest, build_request


class OutputFormat(str, enum.Enum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"


SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
OUT = "Output"
BATCH = "Batch (folders)"

# CLI-only parameters shared by both commands (the request fields are added from the models).
ImageArg = Annotated[Optional[Path], typer.Argument(help="input image (or use --images DIR for a folder)", show_default=False)]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="output file \\[default: ./<name>-<task>.png]", rich_help_panel=OUT)]
FormatOpt = Annotated[Optional[OutputFormat], typer.Option("--format", help="png, jpeg or webp \\[default: from the output suffix]", rich_help_panel=OUT)]
QualityOpt = Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality", rich_help_panel=OUT)]
RowsOpt = Annotated[int, typer.Option("--rows", "--batch-count", min=1, max=256, help="run N seeds (seed, seed+1, ...): one output and one grid row each (A1111's batch count)", rich_help_panel=OUT)]
GridOpt = Annotated[Optional[Path], typer.Option("--grid", help="write a comparison grid, one row per seed: original | mask | result (edit: original | result; a folder in batch mode)", rich_help_panel=OUT)]
HSpaceOpt = Annotated[int, typer.Option("--h-spacing", min=0, max=1024, help="pixels between grid columns", rich_help_panel=OUT)]
VSpaceOpt = Annotated[int, typer.Option("--v-spacing", min=0, max=1024, help="pixels between grid rows", rich_help_panel=OUT)]
GridXOpt = Annotated[Optional[str], typer.Option("--grid-x", metavar="FIELD=V1,V2", help="parameter grid: one column per value of a request field, e.g. steps=10,20,30 (needs --grid)", rich_help_panel=OUT)]
GridYOpt = Annotated[Optional[str], typer.Option("--grid-y", metavar="FIELD=V1,V2", help="parameter grid rows, e.g. guidance_scale=3,5,7", rich_help_panel=OUT)]
LabelsOpt = Annotated[bool, typer.Option("--labels/--no-labels", help="label grid rows (seed) and columns", rich_help_panel=OUT)]
MetadataOpt = Annotated[MetadataMode, typer.Option("--metadata", envvar="CANVASLAB_METADATA", help="what outputs remember: full (A1111 parameters + the recipe with local paths, so replay works here), private (the recipe names inputs and models by file name and sha256, no paths: for images you share), none", rich_help_panel=OUT)]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", min=1, envvar="CANVASLAB_MAX_PIXELS", help="refuse images with more pixels (decompression-bomb guard; 8192x8192 by default, raise it for bigger photos and scans)", rich_help_panel="Input")]
ImagesOpt = Annotated[Optional[Path], typer.Option("--images", help="folder of images, searched recursively", rich_help_panel=BATCH)]
OutDirOpt = Annotated[Optional[Path], typer.Option("--out", help="output folder (existing outputs are skipped: reruns resume)", rich_help_panel=BATCH)]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, max=64, help="worker processes", rich_help_panel=BATCH)]
ShardOpt = Annotated[Optional[str], typer.Option("--shard", metavar="I/N", help="process only part I of N (0-based) \\[default: from RANK/WORLD_SIZE under accelerate launch or torchrun]", rich_help_panel=BATCH)]


def _inpaint_inputs(
    image: ImageArg = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", "-m", help="mask file (white = fill, see --mask-mode)", rich_help_panel="Input")] = None,
    masks: Annotated[Optional[Path], typer.Option("--masks", help="folder of masks paired by name, or one mask file for every image", rich_help_panel=BATCH)] = None,
) -> None:
    """Fill the masked pixels of an image (or of every image in a folder).

    Examples:

      canvaslab inpaint photo.jpg --mask mask.png -o out.png

      canvaslab inpaint photo.jpg --mask mask.png --rows 3 --grid grid.png --labels

      canvaslab inpaint --images imgs/ --masks masks/ --mask-mode black --out results/
    """


def _outpaint_inputs(image: ImageArg = None) -> None:
    """Extend the canvas of an image on any sides and fill the new area.

    Examples:

      canvaslab outpaint photo.jpg --right 256 -o wider.png

      canvaslab outpaint photo.jpg --expand 0.5 --direction left,right --steps 2

      canvaslab outpaint --images imgs/ --out wide/ --left 32 --right 32
    """


def output_options(
    output: OutputOpt = None,
    images: ImagesOpt = None,
    out: OutDirOpt = None,
    workers: WorkersOpt = 1,
    shard: ShardOpt = None,
    rows: RowsOpt = 1,
    grid: GridOpt = None,
    grid_x: GridXOpt = None,
    grid_y: GridYOpt = None,
    h_spacing: HSpaceOpt = 8,
    v_spacing: VSpaceOpt = 8,
    labels: LabelsOpt = False,
    format: FormatOpt = None,
    quality: QualityOpt = 95,
    metadata: MetadataOpt = MetadataMode.full,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Output, grid and batch options shared by inpaint and outpaint."""


def _run(task: str, values: dict[str, Any], **cli: Any) -> None:
    with console.friendly_errors():
        model = REQUESTS[task]
        if cli["grid_x"] is not None:
            axes = parse_axis(cli["grid_x"], model), parse_axis(cli["grid_y"], model) if cli["grid_y"] else None
            request = base_request(model, values, *axes)
        else:
            request = build_request(model, values)
        fmt = cli["format"].value if cli["format"] is not None else None
        spec_args = dict(
            format=fmt, quality=cli["quality"], rows=cli["rows"], h_spacing=cli["h_spacing"],
            v_spacing=cli["v_spacing"], labels=cli["labels"], max_pixels=cli["max_pixels"], metadata=cli["metadata"],
        )
        if cli["grid_x"] is not None or cli["grid_y"] is not None:
            _run_xyz(task, model, request, cli, spec_args)
        elif cli["images"] is not None:
            _run_batch(task, request, cli, spec_args)
        else:
            _run_single(task, request, cli, spec_args)


def _run_single(task: str, request: Any, cli: dict[str, Any], spec_args: dict[str, Any]) -> None:
    image: Path | None = cli["image"]
    if image is None:
        raise InputError(f"give an image to {task} (or --images DIR for a folder)")
    instead = {"out": "use -o FILE", "masks": "use --mask FILE", "shard": "drop --shard"}
    for batch_only, advice in instead.items():
        if cli.get(batch_only) is not None:
            raise InputError(f"--{batch_only} is for folders (--images DIR); for one image {advice}")
    output = cli["output"] or Path(f"{image.stem}-{task}{SUFFIXES[spec_args['format'] or 'png']}")
    check_format(output, spec_args["format"])
    refuse_input_as_output(output, image, cli.get("mask"), flag="-o")
    spec = OutputSpec(grid=cli["grid"], **spec_args)
    saved = render(task, image, cli.get("mask"), request, output, spec)
    report_saved(f"{task} {image}", saved, spec)


def report_saved(what: str, saved: list[tuple[Any, Path]], spec: OutputSpec) -> None:
    """Output paths on stdout (or one JSON object with --json), details on stderr."""
    if console.settings.json:
        console.emit_json({
            "outputs": [str(path) for _, path in saved],
            "seeds": [result.seed for result, _ in saved],
            "grid": str(spec.grid) if spec.grid else None,
            "notices": sorted({n for result, _ in saved for n in result.notices}),
            "seconds": round(sum(result.seconds for result, _ in saved), 3),
        })
        return
    for result, path in saved:
        print(path)
        console.info(f"[dim]{what} -> {path} (seed {result.seed}, {result.seconds:.2f} s)[/]")
    if spec.grid:
        print(spec.grid)


def _run_xyz(task: str, model: Any, request: Any, cli: dict[str, Any], spec_args: dict[str, Any]) -> None:
    if cli["grid_x"] is None:
        raise InputError("--grid-y needs --grid-x (the columns)")
    if cli["grid"] is None or cli["image"] is None or cli["images"] is not None:
        raise InputError("--grid-x/--grid-y need one IMAGE and --grid FILE for the parameter grid")
    if cli["rows"] != 1:
        raise InputError("--rows makes seed rows; with --grid-y use seed=1,2,3 as an axis instead")
    x = parse_axis(cli["grid_x"], model)
    y = parse_axis(cli["grid_y"], model) if cli["grid_y"] else None
    spec = OutputSpec(**spec_args)
    path, results = render_xyz(task, cli["image"], cli.get("mask"), request, x, y, cli["grid"], spec)
    if spec.metadata != MetadataMode.full:
        _rewrite_grid_metadata(path, x.field, y.field if y else None, list(results.values()), spec.metadata)
    if console.settings.json:
        console.emit_json({"grid": str(path), "cells": len(results), "seconds": round(sum(r.seconds for r in results.values()), 3)})
        return
    print(path)


def _rewrite_grid_metadata(path: Path, x: str, y: str | None, results: list[Any], metadata: MetadataMode) -> None:
    """render_xyz embeds every cell's full recipe; store the grid again with what --metadata allows."""
    cells = [recipe_to_write(r.recipe, metadata) for r in results]
    recipe = None if metadata == MetadataMode.none else {"canvaslab_xyz": {"x": x, "y": y, "cells": cells}}
    grid = load_image(path, max_pixels=2**62)  # written just now by us: no decompression bomb
    save_image(path, grid.rgb, recipe=recipe)


def check_format(output: Path, fmt: str | None) -> None:
    if fmt is None:
        return
    suffix = output.suffix.lower()
    if suffix and suffix not in ({".jpg", ".jpeg"} if fmt == "jpeg" else {f".{fmt}"}):
        raise InputError(f"--format {fmt} does not match the output name {output.name}: change one of them")


def _run_batch(task: str, request: Any, cli: dict[str, Any], spec_args: dict[str, Any]) -> None:
    if cli["image"] is not None:
        raise InputError("give either an IMAGE or --images DIR, not both")
    if cli["out"] is None:
        raise InputError("--images needs --out DIR for the results")
    if cli["out"].exists() and not cli["out"].is_dir():
        raise InputError(f"--out {cli['out']} is a file; give a folder (it is created if missing)")
    if cli.get("mask") is not None:
        raise InputError("with --images, give masks as --masks DIR (or --masks FILE for one mask for all)")
    if cli["output"] is not None:
        raise InputError("-o names one output file; with --images use --out DIR")
    masks = cli.get("masks")
    need_masks = task == "inpaint" and request.mask_mode != MaskMode.alpha
    if need_masks and masks is None:
        raise InputError("inpaint --images needs --masks DIR (or one mask file), or --mask-mode alpha")
    suffix = SUFFIXES[spec_args["format"] or "png"]
    pairing = pair_folder(cli["images"], masks, cli["out"], suffix=suffix, need_masks=need_masks)
    make_out_folder(cli["out"])
    index, count = parse_shard(cli["shard"]) if cli["shard"] else launcher_shard()
    items = shard(pairing.items, index, count)
    if index == 0:  # every process pairs the same folder: report its problems once
        _report_pairing(pairing)
    spec = OutputSpec(grid=cli["grid"], **spec_args)
    try:
        with _progress(len(items)) as advance:
            report = run_batch(
                items, task, request.model_dump(mode="json"), spec,
                workers=cli["workers"], on_progress=advance,
            )
    except KeyboardInterrupt:
        console.error_line("interrupted; finished outputs are kept: run the same command again to resume")
        raise typer.Exit(130) from None
    _report_batch(report, pairing)


def _report_pairing(pairing: Any) -> None:
    for path in pairing.images_without_mask:
        console.info(f"[yellow]no mask for[/] {path}")
    for path in pairing.masks_without_image:
        console.info(f"[yellow]no image for mask[/] {path}")
    for key, paths in pairing.clashes:
        console.info(f"[yellow]skipped {len(paths)} images that would share the output {key}:[/] {', '.join(map(str, paths))}")


class _progress:
    """A rich progress bar on stderr, silent with --quiet or --json."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console.err, transient=False,
            disable=console.settings.quiet or console.settings.json,
        )

    def __enter__(self) -> Any:
        self.bar.start()
        task_id = self.bar.add_task("processing", total=self.total)

        def advance(item: BatchItem, status: str) -> None:
            self.bar.update(task_id, advance=1, description=f"{status}: {item.key}")

        return advance

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is None or not self.bar.live.is_started:
            self.bar.stop()
            return
        # the run stopped on an error: its bar would sit above the one-line error; a terminal erases it,
        # a file or pipe gets nothing
        self.bar.live.transient = True
        quiet, console.err.quiet = console.err.quiet, not console.err.is_terminal or console.err.quiet
        try:
            self.bar.stop()
        finally:
            console.err.quiet = quiet


def _report_batch(report: Any, pairing: Any) -> None:
    summary = {
        "done": len(report.done),
        "skipped_existing": len(report.skipped),
        "failed": [{"image": str(item.image), "error": why} for item, why in report.failed],
        "images_without_mask": [str(p) for p in pairing.images_without_mask],
        "masks_without_image": [str(p) for p in pairing.masks_without_image],
        "clashes": [[str(p) for p in paths] for _, paths in pairing.clashes],
    }
    if console.settings.json:
        console.emit_json(summary)
    else:
        console.info(
            f"{len(report.done)} done, {len(report.skipped)} already there (skipped), {len(report.failed)} failed"
        )
        if report.failed:
            table = Table("image", "error", title="failures", title_style="bold red")
            for item, why in report.failed:
                table.add_row(str(item.image), why)
            console.err.print(table)
    if report.failed:
        raise typer.Exit(1)


def run_command(task: str) -> Any:
    """The function a task's typer command calls with (request values, CLI-only values)."""
    return lambda values, **cli: _run(task, values, **cli)


def register(app: typer.Typer) -> None:
    app.command("inpaint", rich_help_panel="Tasks")(
        command(InpaintRequest, [_inpaint_inputs, output_options], run_command("inpaint"))
    )
    app.command("outpaint", rich_help_panel="Tasks")(
        command(OutpaintRequest, [_outpaint_inputs, output_options], run_command("outpaint"))
    )

