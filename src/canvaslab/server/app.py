"""The FastAPI application: native API, A1111 subset, browser UI, guard middleware, error shape."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from canvaslab import __version__
from canvaslab.errors import CanvaslabError
from canvaslab.server import a1111, masks, native, video
from canvaslab.server.inputs import Catalogue, ClientError, hide_paths
from canvaslab.server.jobs import JobQueue, http_status_of
from canvaslab.server.security import GuardMiddleware, redact_access_log
from canvaslab.server.settings import ServerSettings

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("canvaslab.server")


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The application for `settings`; its job queue starts now and stops with the app's lifespan."""
    settings = settings or ServerSettings()
    settings.output.mkdir(parents=True, exist_ok=True)
    for stale in video.remove_stale_scratch(settings.output):
        log.info("removed %s, left by a server that stopped mid-job", stale.name)
    queue = JobQueue(settings.output, size=settings.queue_size, workers=settings.workers, history=settings.history,
                     max_seconds=settings.max_job_seconds, metadata=settings.metadata)
    redact_access_log()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        queue.stop()

    app = FastAPI(
        title="canvaslab", version=__version__, lifespan=lifespan,
        description="Inpaint, outpaint, edit, generate and understand images over HTTP. Native API under "
        "/api/v1 (jobs, Server-Sent Events), an AUTOMATIC1111-compatible subset under /sdapi/v1.",
    )
    app.state.settings, app.state.queue, app.state.catalogue = settings, queue, Catalogue(settings)
    app.include_router(native.router)
    app.include_router(a1111.router)
    app.include_router(a1111.controlnet_router)
    app.include_router(video.router)
    app.include_router(masks.router)
    _add_ui(app)
    _add_error_handlers(app)
    _add_component_schemas(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    # Added last, so it runs first: nothing (not even CORS) answers an unauthenticated request.
    app.add_middleware(GuardMiddleware, token=settings.token, max_body=settings.max_upload_bytes,
                       timeout=settings.request_timeout, cors_origins=tuple(settings.cors_origins))
    return app


def _add_ui(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        page = STATIC / "index.html"
        if not page.is_file():
            raise ClientError("the browser UI is not installed (static/index.html is missing)", status=404)
        return FileResponse(page, media_type="text/html")

    # StaticFiles serves files only (no directory listings) and refuses paths leaving the folder.
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.field)

    @app.exception_handler(CanvaslabError)
    async def canvaslab_error(request: Request, exc: CanvaslabError) -> JSONResponse:
        return _error(http_status_of(exc), hide_paths(str(exc)))  # a backstop: no server folder reaches a client

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")) or None
        return _error(422, f"invalid {field or 'request'}: {err.get('msg', 'invalid value')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")


def _add_component_schemas(app: FastAPI) -> None:
    """The request models' enums/sub-models, which the task bodies refer to, in the OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(native._definitions())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
