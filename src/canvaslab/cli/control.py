"""`canvaslab control preview`: the map a ControlNet preprocessor makes of an image, to see what the model gets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from canvaslab.cli import console
from canvaslab.core.image import save_image

app = typer.Typer(help="ControlNet tools: preview a preprocessor's map (see docs/control.md).", no_args_is_help=True,
                  rich_markup_mode="rich")


@app.command()
def preview(
    image: Annotated[Path, typer.Argument(help="input image", show_default=False)],
    preprocessor: Annotated[str, typer.Option("--preprocessor", "-p", help="none, canny, scribble, lineart, invert, tile, "
                                              "blur, inpaint, shuffle, depth (or an A1111 module name)")] = "canny",
    threshold_a: Annotated[Optional[float], typer.Option("--threshold-a", help="the preprocessor's first setting "
                                                         "(canny: low threshold, scribble: stroke width, tile: "
                                                         "down-sampling, blur: sigma) \\[default: its own]")] = None,
    threshold_b: Annotated[Optional[float], typer.Option("--threshold-b", help="its second setting (canny: high "
                                                         "threshold) \\[default: its own]")] = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", "-m", help="mask (white = fill), for --preprocessor inpaint")] = None,
    size: Annotated[Optional[int], typer.Option("--size", min=8, max=8192, help="long side to make the map at "
                                                "(what the model works at) \\[default: the image's]")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="shuffle's random warp")] = 0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="output file \\[default: ./<name>-<preprocessor>.png]")] = None,
) -> None:
    """Write the map a preprocessor makes of IMAGE: what a ControlNet unit with that preprocessor gets.

    Examples:

      canvaslab control preview photo.jpg --preprocessor canny --threshold-a 50 --threshold-b 150

      canvaslab control preview photo.jpg -p inpaint --mask mask.png -o marked.png
    """
    with console.friendly_errors():
        from canvaslab.tasks.batch import refuse_input_as_output
        from canvaslab.tasks.conditioning import control_preview

        target = output or Path(f"{image.stem}-{preprocessor.split()[0]}.png")
        refuse_input_as_output(target, image, mask, flag="-o")
        made = control_preview(image, preprocessor, mask=mask, threshold_a=threshold_a, threshold_b=threshold_b,
                               size=size, seed=seed)
        print(save_image(target, made))
