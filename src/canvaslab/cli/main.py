"""The `canvaslab` command."""

from __future__ import annotations

from typing import Annotated

import typer

from canvaslab import __version__
from canvaslab.cli import console, control, create, data, doctor, models, paint, serve, texture, tools, train, understand, video
from canvaslab.cli import eval as evaluate
from canvaslab.cli import mask as masking

app = typer.Typer(
    name="canvaslab",
    help="Masked image completion: inpaint, outpaint and friends, from one tool.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"canvaslab {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks instead of one-line errors")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only results (paths), no notices or progress")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False,
) -> None:
    console.settings.debug, console.settings.quiet, console.settings.json = debug, quiet, json_out
    console.install_notice_printer()


paint.register(app)
create.register(app)
understand.register(app)
tools.register(app)
serve.register(app)
doctor.register(app)
app.add_typer(models.app, name="models", rich_help_panel="Tools")
app.add_typer(train.app, name="train", rich_help_panel="Training")
app.add_typer(data.app, name="data", rich_help_panel="Training")
app.add_typer(texture.app, name="texture", rich_help_panel="Tools")
app.add_typer(masking.app, name="mask", rich_help_panel="Tools")
app.add_typer(evaluate.app, name="eval", rich_help_panel="Tools")
app.add_typer(video.app, name="video", rich_help_panel="Tasks")
app.add_typer(control.app, name="control", rich_help_panel="Tools")


def main() -> None:
    app()
