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
    SUFFIXES, FormatOpt, HSpaceOpt, ImageArg, LabelsOpt, QualityOpt, RowsOpt, VSpaceOpt,
    check_format, output_options, report_saved, run_command,
)
from canvaslab.tasks.render import OutputSpec, render
from canvaslab.tasks.requests import EditRequest, GenerateRequest, build_request


def _edit_inputs(image: ImageArg = None) -> None:
    """Change an image from an instruction, InstructPix2Pix style (or every image in a folder).

    The output has the input's size. --image-guidance-scale keeps it closer to the input, --guidance-scale follows the instruction more.

    Examples:

      canvaslab edit photo.jpg --instruction "make it winter" -o winter.png

      canvaslab edit photo.jpg --instruction "turn it into a painting" --rows 3 --grid grid.png --labels

      canvaslab edit --images imgs/ --out edited/ --instruction "make it night"
    """


def _generate_options(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="output file \\[default: ./generate.png]", rich_help_panel="Output")] = None,
    rows: RowsOpt = 1,
    grid: Annotated[Optional[Path], typer.Option("--grid", help="write a grid with one row per seed", rich_help_panel="Output")] = None,
    h_spacing: HSpaceOpt = 8,
    v_spacing: VSpaceOpt = 8,
    labels: LabelsOpt = False,
    format: FormatOpt = None,
    quality: QualityOpt = 95,
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
            v_spacing=cli["v_spacing"], labels=cli["labels"],
        )
        saved = render("generate", None, None, request, output, spec)
        report_saved("generate", saved, spec)


def register(app: typer.Typer) -> None:
    app.command("edit", rich_help_panel="Tasks")(command(EditRequest, [_edit_inputs, output_options], run_command("edit")))
    app.command("generate", rich_help_panel="Tasks")(command(GenerateRequest, [_generate_options], _run_generate))
