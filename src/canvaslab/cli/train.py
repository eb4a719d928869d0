"""`canvaslab train inpaint|edit CONFIG.yaml [key=value ...]`: fine-tune diffusion models.

Runs as is on one CPU/GPU, and under `accelerate launch -m canvaslab train ...` on many GPUs/nodes
(DDP, DeepSpeed ZeRO, FSDP: choose with `accelerate config` or `--config_file`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from canvaslab.cli import console

app = typer.Typer(
    help="Fine-tune inpainting and instruction-editing models (LoRA, partial, full) and the unified model from a YAML config.",
    no_args_is_help=False,
    invoke_without_command=True,
)

ConfigArg = Annotated[Optional[Path], typer.Argument(help="YAML config (see configs/train/)", show_default=False)]
OverridesArg = Annotated[
    Optional[list[str]], typer.Argument(help="overrides: KEY=VALUE with dotted keys, e.g. train.max_steps=200", show_default=False)
]
PrintOpt = Annotated[bool, typer.Option("--print-config", help="print the resolved config (YAML) and exit")]

_EXAMPLES = """
    canvaslab train inpaint configs/train/inpaint-lora.yaml data.path=murals/ output=runs/murals
    canvaslab train edit configs/train/edit-lora.yaml train.max_steps=2000 resume=latest
    canvaslab train inpaint my.yaml --print-config
    canvaslab train unified configs/train/unified-stage1.yaml data.t2i=[imagenet/*.parquet]
    accelerate launch --num_processes 4 -m canvaslab train edit configs/train/edit-zero2-fp16.yaml
"""


@app.callback()
def _group(ctx: typer.Context, print_config: PrintOpt = False) -> None:
    """Fine-tune inpainting (9-channel) and instruction-editing (4+4N-channel) diffusion models."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"print_config": print_config}
        return
    if print_config:
        with console.friendly_errors():
            from canvaslab.train.config import dump_config, validate_config

            print(dump_config(validate_config({"data": {"path": "DATASET"}})), end="")
        raise typer.Exit()
    print(ctx.get_help())


def _run(objective: str, config: Optional[Path], overrides: Optional[list[str]], print_config: bool, ctx: typer.Context) -> None:
    print_config = print_config or bool((ctx.obj or {}).get("print_config"))
    with console.friendly_errors():
        from canvaslab.train.config import dump_config, load_config

        if config is not None and "=" in str(config) and not config.exists():
            overrides = [str(config), *(overrides or [])]
            config = None
        resolved = load_config(config, list(overrides or []), objective=objective)  # type: ignore[arg-type]
        if print_config:
            print(dump_config(resolved), end="")
            return
        if objective == "unified":
            from canvaslab.train.unified import train_unified as run
        else:
            from canvaslab.train.trainer import train as run

        report = run(resolved, report=_say)
        if console.settings.json:
            console.emit_json({"steps": report.steps, "final_loss": report.losses[-1] if report.losses else None,
                               "checkpoints": report.checkpoints, "validations": report.validations,
                               "export": report.export, "stopped_by": report.stopped_by, "seconds": report.seconds})
        elif report.export:
            print(report.export)
    if report.stopped_by:
        raise typer.Exit(130 if report.stopped_by == "SIGINT" else 143)


def _say(text: str) -> None:
    if not console.settings.quiet:
        print(text, file=sys.stderr, flush=True)


@app.command("inpaint", epilog=_EXAMPLES)
def inpaint(ctx: typer.Context, config: ConfigArg = None, overrides: OverridesArg = None, print_config: PrintOpt = False) -> None:
    """Train an inpainting model: noisy latents + mask + masked-image latents (a 4-channel base is widened to 9)."""
    _run("inpaint", config, overrides, print_config, ctx)


@app.command("unified", epilog=_EXAMPLES)
def unified(ctx: typer.Context, config: ConfigArg = None, overrides: OverridesArg = None, print_config: PrintOpt = False) -> None:
    """Train the unified (Show-o) model: t2i, language and understanding rows mixed per step (stage configs)."""
    _run("unified", config, overrides, print_config, ctx)


@app.command("edit", epilog=_EXAMPLES)
def edit(ctx: typer.Context, config: ConfigArg = None, overrides: OverridesArg = None, print_config: PrintOpt = False) -> None:
    """Train an instruction-editing model (InstructPix2Pix; N conditioning frames -> 4+4N channels)."""
    _run("edit", config, overrides, print_config, ctx)
