"""`canvaslab edit` (change an image from an instruction) and `canvaslab generate` (text to image).

Flags come from `EditRequest` / `GenerateRequest` like inpaint's. Shared fields these tasks do not
read (--feather, --strength, --mask-weight, ...) keep their flags, because every request field has
one, but the request refuses any non-default value in one line instead of ignoring it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from canvaslab.cli import console
from canvaslab.cli.options import command
from canvaslab.cli.paint import (
    SUFFIXES, FormatOpt, HSpaceOpt, ImageArg, LabelsOpt, MetadataOpt, QualityOpt, RowsOpt, VSpaceOpt,
    check_format, output_options, report_saved, run_command,
)
from canvaslab.errors import InputError
from canvaslab.tasks.common import open_image
from canvaslab.tasks.edit import frame_files
from canvaslab.tasks.render import OutputSpec, render
from canvaslab.tasks.requests import EditRequest, GenerateRequest, build_request
from canvaslab.tasks.result import MetadataMode


def _edit_inputs(
    image: ImageArg = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", "-m", help="change only the white pixels (models with a masked-edit pipeline: flux-kontext, qwen-image-edit, flux2-klein)", rich_help_panel="Input")] = None,
) -> None:
    """Change an image from an instruction, InstructPix2Pix style (or every image in a folder).

    The output has the input's size. --image-guidance-scale keeps it closer to the input, --guidance-scale follows the instruction more.
    A multi-frame model (UNet of 4+4N channels) takes a folder of N frames with --frames instead of IMAGE.

    Examples:

      canvaslab edit photo.jpg --instruction "make it winter" -o winter.png

      canvaslab edit photo.jpg --mask sky.png --model flux-kontext --instruction "a stormy sky" -o storm.png

      canvaslab edit photo.jpg --instruction "turn it into a painting" --rows 3 --grid grid.png --labels

      canvaslab edit --images imgs/ --out edited/ --instruction "make it night"

      canvaslab edit --frames video01/ --model my-84ch-model/ --instruction "drop the cup" -o next.png
    """


def _run_edit(values: dict[str, Any], **cli: Any) -> None:
    """One image, a folder of images (--images) or, with --frames, one multi-frame edit."""
    if values.get("frames") is None:
        run_command("edit")(values, **cli)
        return
    with console.friendly_errors():
        request = build_request(EditRequest, values)
        _check_frames_flags(cli)
        fmt = cli["format"].value if cli["format"] is not None else None
        folder = Path(request.frames)  # type: ignore[arg-type]
        output = cli["output"] or Path(f"{folder.resolve().name}-edit{SUFFIXES[fmt or 'png']}")
        check_format(output, fmt)
        spec = OutputSpec(
            format=fmt, quality=cli["quality"], rows=cli["rows"], grid=cli["grid"], h_spacing=cli["h_spacing"],
            v_spacing=cli["v_spacing"], labels=cli["labels"], max_pixels=cli["max_pixels"], metadata=cli["metadata"],
        )
        saved = _render_frames(request, output, spec)
        report_saved(f"edit --frames {folder}", saved, spec)


def _check_frames_flags(cli: dict[str, Any]) -> None:
    if cli["image"] is not None:
        raise InputError("give either an IMAGE or --frames DIR, not both")
    if cli["images"] is not None:
        raise InputError("--frames DIR is one multi-frame edit; --images DIR edits a folder of single images: pick one")
    if cli["grid_x"] is not None or cli["grid_y"] is not None:
        raise InputError("parameter grids (--grid-x/--grid-y) need one IMAGE; they do not take --frames yet")
    for batch_only in ("out", "shard"):
        if cli.get(batch_only) is not None:
            raise InputError(f"--{batch_only} is for folders of single images (--images DIR); with --frames use -o FILE")
    if cli["workers"] != 1:
        raise InputError("--workers is for folders of single images (--images DIR); --frames runs one edit")


def _render_frames(request: EditRequest, output: Path, spec: OutputSpec) -> list[tuple[Any, Path]]:
    """`render` for a multi-frame edit: the frames come from the request; the grid's "original" is the last frame."""
    last = None
    if spec.grid is not None:
        last = open_image(frame_files(Path(request.frames))[-1], spec.max_pixels).rgb  # type: ignore[arg-type]
    return render("edit", None, None, request, output, spec, original=last)


def _generate_options(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="output file \\[default: ./generate.png]", rich_help_panel="Output")] = None,
    rows: RowsOpt = 1,
    grid: Annotated[Optional[Path], typer.Option("--grid", help="write a grid with one row per seed", rich_help_panel="Output")] = None,
    h_spacing: HSpaceOpt = 8,
    v_spacing: VSpaceOpt = 8,
    labels: LabelsOpt = False,
    format: FormatOpt = None,
    quality: QualityOpt = 95,
    metadata: MetadataOpt = MetadataMode.full,
) -> None:
    """Paint an image from a text prompt.

    The size defaults to the model's native resolution; --width/--height (or --size for a square) must be multiples of 8.

    Examples:

      canvaslab generate --prompt "a lighthouse at dawn" -o lighthouse.png

      canvaslab generate --prompt "a lighthouse" --model sdxl --width 1216 --height 832 --seed 7

      canvaslab generate --prompt "a lighthouse" --rows 4 --grid seeds.png --labels
    """


def _run_generate(values: dict[str, Any], **cli: Any) -> None:
    with console.friendly_errors():
        request = build_request(GenerateRequest, values)
        fmt = cli["format"].value if cli["format"] is not None else None
        output = cli["output"] or Path(f"generate{SUFFIXES[fmt or 'png']}")
        check_format(output, fmt)
        spec = OutputSpec(
            format=fmt, quality=cli["quality"], rows=cli["rows"], grid=cli["grid"], h_spacing=cli["h_spacing"],
            v_spacing=cli["v_spacing"], labels=cli["labels"], metadata=cli["metadata"],
        )
        saved = render("generate", None, None, request, output, spec)
        report_saved("generate", saved, spec)


def register(app: typer.Typer) -> None:
    app.command("edit", rich_help_panel="Tasks")(command(EditRequest, [_edit_inputs, output_options], _run_edit))
    app.command("generate", rich_help_panel="Tasks")(command(GenerateRequest, [_generate_options], _run_generate))
