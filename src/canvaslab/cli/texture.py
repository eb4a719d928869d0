"""`canvaslab texture seamless` (make an image tile without a seam) and `canvaslab texture check` (measure it).

seamless's flags come from `TextureRequest` like inpaint's (engine, seed, prompt, model, ...), minus
--tiling and --tile, which the task sets itself; the output carries its recipe, so `canvaslab replay`
reruns it. check prints the wrap-around seams' errors next to the interior's (`core.seams`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from canvaslab.cli import console
from canvaslab.cli.options import command
from canvaslab.cli.paint import SUFFIXES, FormatOpt, MaxPixelsOpt, MetadataOpt, QualityOpt, check_format
from canvaslab.core.image import DEFAULT_MAX_PIXELS, load_image
from canvaslab.core.seams import seam_report
from canvaslab.errors import InputError
from canvaslab.tasks.batch import refuse_input_as_output
from canvaslab.tasks.render import OutputSpec, render
from canvaslab.tasks.requests import TextureRequest, Tiling, build_request
from canvaslab.tasks.result import MetadataMode

app = typer.Typer(
    help="Seamless textures: make an image tile (seamless) and measure its seams (check).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

ImageArg = Annotated[Path, typer.Argument(help="input image", show_default=False)]


def _seamless_inputs(
    image: ImageArg,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="output file \\[default: ./<name>-seamless.png]", rich_help_panel="Output")] = None,
    format: FormatOpt = None,
    quality: QualityOpt = 95,
    metadata: MetadataOpt = MetadataMode.full,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Make an image tile without a seam: roll it by half, inpaint a band over the seams, roll it back.

    Pixels outside the band are the input's. The default engine, patchmatch, copies texture across the
    image's edges (wrap-around); diffusion paints the band with circular padding (--model, --prompt).
    Prints the output path; the seams before and after go to stderr.

    Examples:

      canvaslab texture seamless wood.jpg -o wood-tile.png

      canvaslab texture seamless frieze.png --axes x --band 24 --seed 3

      canvaslab texture seamless moss.png --engine diffusion --model sd15-inpaint --prompt "moss" --align resize
    """


def _run_seamless(values: dict[str, Any], **cli: Any) -> None:
    with console.friendly_errors():
        request = build_request(TextureRequest, values)
        image: Path = cli["image"]
        fmt = cli["format"].value if cli["format"] is not None else None
        output = cli["output"] or Path(f"{image.stem}-seamless{SUFFIXES[fmt or 'png']}")
        check_format(output, fmt)
        refuse_input_as_output(output, image, flag="-o")
        spec = OutputSpec(format=fmt, quality=cli["quality"], max_pixels=cli["max_pixels"], metadata=cli["metadata"])
        [(result, path)] = render("texture", image, None, request, output, spec)
        axes = _axes(request.axes)
        before = seam_report(load_image(image, max_pixels=cli["max_pixels"]).rgb, axes)
        after = seam_report(result.image, axes)
        if console.settings.json:
            console.emit_json({
                "output": str(path), "seed": result.seed, "band": result.recipe["request"]["band"],
                "before": before.as_dict(), "after": after.as_dict(), "notices": result.notices,
                "seconds": round(result.seconds, 3),
            })
            return
        print(path)
        for axis in axes:
            was, now = before.axes[axis], after.axes[axis]
            console.info(f"[dim]{axis} seam: {was.seam:.2f} -> {now.seam:.2f} (interior {now.interior:.2f}, "
                         f"ratio {was.ratio:.2f} -> {now.ratio:.2f})[/]")
        console.info(f"[dim]texture seamless {image} -> {path} (seed {result.seed}, band "
                     f"{result.recipe['request']['band']} px, {result.seconds:.2f} s)[/]")


def check(
    image: ImageArg,
    axes: Annotated[Tiling, typer.Option("--axes", help="seams to measure: x (right edge meets left), y (bottom meets top) or both")] = Tiling.both,
    strict: Annotated[bool, typer.Option("--strict", help="exit 1 unless every measured seam is seamless (score <= 3)")] = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Measure how visible an image's wrap-around seams are when it is tiled.

    For each axis: the seam's error (mean |difference| between the two edges that meet, 0-255), the
    interior's (median over the lines of neighbouring pixels, +- their robust spread), the ratio of the
    two (at most 1: no louder than a typical line), the score (how many spreads the seam stands out;
    seamless up to 3) and the share of interior lines quieter than the seam. --json prints it all.
    """
    with console.friendly_errors():
        if axes == Tiling.none:
            raise InputError("--axes none measures nothing: give x, y or both")
        report = seam_report(load_image(image, max_pixels=max_pixels).rgb, _axes(axes))
        if console.settings.json:
            console.emit_json({"image": str(image), **report.as_dict()})
        else:
            print(f"{image}: {report.width}x{report.height}, {'seamless' if report.seamless else 'seams show'}")
            for line in report.lines():
                print(f"  {line}")
    if strict and not report.seamless:
        raise typer.Exit(1)


def _axes(axes: Tiling) -> tuple[str, ...]:
    return ("x", "y") if axes == Tiling.both else (axes.value,)


app.command("seamless")(command(TextureRequest, [_seamless_inputs], _run_seamless, exclude=("tiling", "tile")))
app.command("check")(check)
