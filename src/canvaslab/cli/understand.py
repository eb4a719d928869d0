"""`canvaslab understand`: answer questions about images with the unified model (Show-o).

Flags come from `UnderstandRequest`. Answers go to stdout, one block per image (its questions and
answers); with the global --json, one JSON object with every answer and the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from canvaslab.cli import console
from canvaslab.cli.options import command
from canvaslab.cli.paint import MaxPixelsOpt
from canvaslab.core.image import DEFAULT_MAX_PIXELS
from canvaslab.tasks.requests import UnderstandRequest, build_request
from canvaslab.tasks.understand import understand


def _understand_inputs(
    images: Annotated[list[Path], typer.Argument(help="images, or folders searched recursively", show_default=False)],
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Answer questions about images with the unified model (Show-o); every question is asked about every image.

    Answers are greedy (the most likely token each step) unless --sample.

    Examples:

      canvaslab understand photo.jpg --question "What is in the picture?"

      canvaslab understand a.jpg b.jpg --question "Describe it. *** Is anything unusual?"

      canvaslab --json understand photos/ --question "How many people are there?" --model show-o-512
    """


def _run_understand(values: dict[str, Any], *, images: list[Path], max_pixels: int) -> None:
    with console.friendly_errors():
        request = build_request(UnderstandRequest, values)  # type: ignore[arg-type]
        result = understand(images, request=request, max_pixels=max_pixels)
        if console.settings.json:
            console.emit_json(result.to_json())
            return
        current = None
        for answer in result.answers:
            if answer.image != current:
                if current is not None:
                    print()
                print(answer.image)
                current = answer.image
            print(f"  Q: {answer.question}")
            print(f"  A: {answer.answer}")
        console.info(f"[dim]{len(result.answers)} answers (seed {result.seed}, {result.seconds:.2f} s)[/]")


def register(app: typer.Typer) -> None:
    app.command("understand", rich_help_panel="Tasks")(command(UnderstandRequest, [_understand_inputs], _run_understand))  # type: ignore[arg-type]
