"""Console output and error handling shared by every command.

Results go to stdout (paths, or JSON with --json); messages, notices and progress go to stderr.
A `CanvaslabError` becomes one red line and a non-zero exit; a traceback only with --debug.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

from canvaslab.errors import CanvaslabError


@dataclass
class Settings:
    debug: bool = False
    quiet: bool = False
    json: bool = False


settings = Settings()
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class _NoticeHandler(logging.Handler):
    """Print the library's notices (WARNING on the ``canvaslab`` logger) as yellow lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        if not settings.quiet:
            err.print(f"[yellow]notice:[/] {record.getMessage()}", markup=True, highlight=False)


def install_notice_printer() -> None:
    logger = logging.getLogger("canvaslab")
    if not any(isinstance(h, _NoticeHandler) for h in logger.handlers):
        logger.addHandler(_NoticeHandler(level=logging.WARNING))
    logger.setLevel(logging.INFO)
    logger.propagate = False


def info(message: str) -> None:
    if not settings.quiet:
        err.print(message, markup=True, highlight=False)


def error_line(message: str) -> None:
    from rich.markup import escape

    # escape: messages quote things like 'canvaslab[server]', which rich would take for markup
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)


# Optional packages -> the extra that brings them, for a one-line answer when one is missing.
EXTRAS = {
    "torch": "diffusion", "diffusers": "diffusion", "transformers": "diffusion", "accelerate": "diffusion",
    "peft": "diffusion", "safetensors": "diffusion", "tokenizers": "diffusion", "huggingface_hub": "diffusion",
    "yaml": "train", "pyarrow": "train", "tensorboard": "train",
    "fastapi": "server", "uvicorn": "server", "multipart": "server", "httpx": "server",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """'... needs X: pip install canvaslab[extra]' when `exc` is an optional package we know."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return f"this command needs the {top} package, which is not installed: pip install 'canvaslab[{extra}]'"


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn user errors (and, without --debug, unexpected ones) into one line and an exit code."""
    try:
        yield
    except CanvaslabError as exc:
        if settings.debug:
            raise
        error_line(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except ModuleNotFoundError as exc:
        if settings.debug:
            raise
        message = missing_extra(exc) or (
            f"the Python package {exc.name!r} is not installed; pip install 'canvaslab[diffusion,train,server]' "
            "brings every optional one (run with --debug for the traceback)"
        )
        error_line(message)
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if settings.debug:
            raise
        error_line(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback, and please report it)")
        raise typer.Exit(1) from None
