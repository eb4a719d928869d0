"""`canvaslab serve`: the HTTP server (native API, A1111 subset, browser UI). fastapi/uvicorn load inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from canvaslab.cli import console
from canvaslab.errors import InputError
from canvaslab.server.settings import SERVER_MAX_PIXELS


def serve(
    host: Annotated[str, typer.Option("--host", help="address to listen on; anything but loopback needs --token")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port")] = 7860,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", help="model clients may use (alias, hub id, folder or file), repeatable; the first is the default")] = None,
    engine: Annotated[Optional[str], typer.Option("--engine", help="default engine for requests that name none")] = None,
    mask_model: Annotated[Optional[list[str]], typer.Option(
        "--mask-model", help="mask model (SAM, CLIPSeg, OWL-ViT/OWLv2/Grounding DINO folder or cached hub id) clients "
        "may use by its name for /api/v1/mask and the Select tool, repeatable; the first of each kind is the default")] = None,
    token: Annotated[Optional[str], typer.Option(
        "--token", help="API token every request must carry [default: $CANVASLAB_TOKEN]", show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="folder the results are written to")] = Path("canvaslab-server-output"),
    queue_size: Annotated[int, typer.Option("--queue-size", min=1, help="jobs that may wait; more get 429")] = 64,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="largest request body (MB); more get 413")] = 50.0,
    max_pixels: Annotated[int, typer.Option(
        "--max-pixels", min=4096, help="largest image, and largest size a job works at (pixels); more get 400")] = SERVER_MAX_PIXELS,
    max_job_seconds: Annotated[float, typer.Option(
        "--max-job-seconds", min=0, help="a running job is stopped after this long (0: never)")] = 300.0,
    request_timeout: Annotated[float, typer.Option(
        "--request-timeout", min=0.1, help="seconds a client has to send its headers, and again its body")] = 60.0,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", min=2, help="connections served at once; more get 503")] = 256,
    allow_downloads: Annotated[bool, typer.Option(
        "--allow-downloads", help="also offer the built-in model aliases, downloading missing models when first used "
        "[default: only --model, never downloaded]")] = False,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", help="web origin allowed to call the API from a browser, repeatable [default: none]")] = None,
    lora: Annotated[Optional[list[str]], typer.Option("--lora", help="LoRA file clients may use by its name, repeatable")] = None,
    control_model: Annotated[Optional[list[str]], typer.Option(
        "--control-model", help="ControlNet (folder, file or cached hub id) clients may use by its name, repeatable")] = None,
    ip_adapter: Annotated[Optional[list[str]], typer.Option(
        "--ip-adapter", help="IP-Adapter weights file clients may use by its name, repeatable (its image encoder in "
        "image_encoder/ beside it)")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="worker threads (one per device)")] = 1,
    metadata: Annotated[str, typer.Option(
        "--metadata", help="what results say about how they were made: private (models, LoRAs and inputs by name "
        "+ sha256, never the server's paths), full, or none")] = "private",
) -> None:
    """Serve the HTTP API, the AUTOMATIC1111-compatible subset and the browser UI (see docs/server.md)."""
    with console.friendly_errors():
        from canvaslab.engines import engine_names
        from canvaslab.server.settings import ServerSettings, check_exposure, token_from_env

        token = token_from_env(token)
        check_exposure(host, token)
        if engine is not None and engine not in engine_names():
            raise InputError(f"unknown engine {engine!r}: choose one of {', '.join(engine_names())}")
        settings = ServerSettings(
            host=host, port=port, token=token, output=output, engine=engine, models=list(model or []),
            loras=list(lora or []), control_models=list(control_model or []), ip_adapters=list(ip_adapter or []),
            allow_downloads=allow_downloads, queue_size=queue_size, max_upload_mb=max_upload_mb,
            max_pixels=max_pixels, max_job_seconds=max_job_seconds, request_timeout=request_timeout,
            max_connections=max_connections, cors_origins=list(cors_origin or []), workers=workers,
            metadata=metadata, mask_models=list(mask_model or []),
        )
        run_server(settings)


def run_server(settings: object) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InputError("canvaslab serve needs the server extra: pip install 'canvaslab[server]'") from None

    from canvaslab.server.app import create_app
    from canvaslab.server.connections import serve as serve_app

    app = create_app(settings)  # type: ignore[arg-type]
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host  # type: ignore[attr-defined]
    console.err.print(f"canvaslab serving on http://{shown}:{settings.port}/ (API docs at /docs)")  # type: ignore[attr-defined]
    serve_app(app, settings)


def register(app: typer.Typer) -> None:
    app.command("serve", rich_help_panel="Server")(serve)
