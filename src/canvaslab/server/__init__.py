"""`canvaslab serve`: the HTTP server (native API, AUTOMATIC1111-compatible subset, job queue, browser UI).

The top layer next to the CLI: it imports tasks, engines and core, never the CLI. `create_app`
builds the FastAPI application from `ServerSettings`; see docs/server.md.
"""

from __future__ import annotations

from canvaslab.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def create_app(settings: ServerSettings | None = None):  # type: ignore[no-untyped-def]
    """The FastAPI application (imported lazily: fastapi loads only when a server is built)."""
    from canvaslab.server.app import create_app as build

    return build(settings)
