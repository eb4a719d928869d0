"""The native API under /api/v1: submit tasks as jobs, follow them (JSON or Server-Sent Events), fetch results."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from canvaslab import __version__
from canvaslab.server.inputs import TASKS, ClientError, decode_base64_image, parse_json, prepare, task_work
from canvaslab.server.jobs import Job, QueueFull
from canvaslab.tasks.requests import REQUESTS, UnderstandRequest

router = APIRouter(prefix="/api/v1")

JOB_ID = re.compile(r"[0-9a-f]{32}")
RESULT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(png|mp4|webm|mkv|gif)")
MEDIA_TYPES = {"png": "image/png", "mp4": "video/mp4", "webm": "video/webm", "mkv": "video/x-matroska", "gif": "image/gif"}
POLL_SECONDS = 0.05
HEARTBEAT_SECONDS = 15.0
IMAGE_PARTS = ("image", "mask")


# -- submitting ------------------------------------------------------------------------------


async def read_submission(request: Request, max_part: int) -> tuple[Any, bytes | None, bytes | None]:
    """(fields, image bytes, mask bytes) from a JSON body with base64 images, or multipart form data."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _read_multipart(request, max_part)
    if content_type and not content_type.startswith("application/json"):
        raise ClientError(f"send application/json or multipart/form-data, not {content_type.split(';')[0]}", status=415)
    raw = await request.body()
    if not raw.strip():
        raise ClientError("the request body is empty: send the task's fields as a JSON object")
    fields = parse_json(raw)
    if not isinstance(fields, dict):
        raise ClientError(f"the request body must be a JSON object, got {type(fields).__name__}")
    images = {name: decode_base64_image(fields.pop(name), name) if fields.get(name) is not None else fields.pop(name, None)
              for name in IMAGE_PARTS}
    return fields, images["image"], images["mask"]


async def _read_multipart(request: Request, max_part: int) -> tuple[Any, bytes | None, bytes | None]:
    try:
        # Three parts at most (request, image, mask): a form of thousands of tiny parts is refused here.
        form = await request.form(max_part_size=max_part, max_files=len(IMAGE_PARTS) + 1, max_fields=len(IMAGE_PARTS) + 1)
    except Exception as exc:  # noqa: BLE001 - the multipart parser's errors are all "malformed form"
        raise ClientError(f"the multipart form could not be read: {exc}") from None
    unknown = sorted(set(form.keys()) - {"request", *IMAGE_PARTS})
    if unknown:
        raise ClientError(f"unknown form part {unknown[0]!r}: send 'request' (JSON), 'image' and 'mask'", field=unknown[0])
    fields: Any = {}
    if "request" in form:
        text = form["request"]
        if not isinstance(text, str):
            text = await text.read()  # bytes: parse_json refuses what is not UTF-8 JSON
        try:
            fields = parse_json(text, "the 'request' part") if text.strip() else {}
        except ClientError as exc:
            raise ClientError(exc.message, field="request") from None
    images: dict[str, bytes | None] = {}
    for name in IMAGE_PARTS:
        part = form.get(name)
        if part is None or isinstance(part, str):
            images[name] = decode_base64_image(part, name) if part else None
        else:
            images[name] = await part.read()
    return fields, images["image"], images["mask"]


def _submitted(request: Request, job: Job) -> JSONResponse:
    queue = request.app.state.queue
    body = queue.snapshot(job)
    links = {"self": f"/api/v1/jobs/{job.id}", "events": f"/api/v1/jobs/{job.id}/events",
             "cancel": f"/api/v1/jobs/{job.id}/cancel"}
    return JSONResponse(
        {"id": job.id, "task": job.task, "status": body["status"], "position": body["position"], "links": links},
        status_code=202, headers={"Location": links["self"]},
    )


async def submit(task: str, request: Request) -> JSONResponse:
    state = request.app.state
    fields, image, mask = await read_submission(request, state.settings.max_upload_bytes)
    prepared = await run_in_threadpool(prepare, task, fields, image, mask, state.settings, state.catalogue)
    try:
        job = state.queue.submit(task, task_work(prepared, state.settings.max_pixels))
    except QueueFull as exc:
        raise ClientError(str(exc), status=429) from None
    return _submitted(request, job)


def _body_schema(task: str) -> dict[str, Any]:
    """The OpenAPI request body of a task: its request model's fields plus the images."""
    kind = UnderstandRequest if task == "understand" else REQUESTS[task]
    schema = kind.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    properties = dict(schema.get("properties", {}))
    if task != "generate":
        properties["image"] = {"type": "string", "description": "the input image, base64 or a data URL"}
    if task == "inpaint":
        properties["mask"] = {"type": "string", "description": "the mask, base64 or a data URL; white = fill"}
    json_schema = {**schema, "properties": properties, "required": ["image"] if task != "generate" else []}
    form = {"type": "object", "properties": {
        "request": {"type": "string", "description": "the task's fields as a JSON object"},
        **({"image": {"type": "string", "format": "binary"}} if task != "generate" else {}),
        **({"mask": {"type": "string", "format": "binary"}} if task == "inpaint" else {}),
    }}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": json_schema}, "multipart/form-data": {"schema": form},
    }}}


def _definitions() -> dict[str, Any]:
    """Enum and nested models the request schemas refer to, for the OpenAPI components."""
    found: dict[str, Any] = {}
    for kind in (*REQUESTS.values(), UnderstandRequest):
        found.update(kind.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}))
    return found


def _add_task_route(task: str) -> None:
    async def run(request: Request) -> JSONResponse:
        return await submit(task, request)

    run.__name__ = f"submit_{task}"
    router.add_api_route(
        f"/{task}", run, methods=["POST"], status_code=202, summary=f"Queue a {task} job",
        description=f"Body: the fields of the {task} request (see the CLI's `canvaslab {task} --help`) plus "
        "base64 images, or multipart parts 'request' (JSON), 'image', 'mask'. Answers 202 with the job id.",
        openapi_extra=_body_schema(task), tags=["tasks"],
        responses={202: {"description": "queued"}, 400: {"description": "bad input"}, 413: {"description": "too large"},
                   422: {"description": "invalid field"}, 429: {"description": "queue full"}},
    )


for _task in TASKS:
    _add_task_route(_task)


# -- following jobs --------------------------------------------------------------------------


def _job(request: Request, job_id: str) -> Job:
    job = request.app.state.queue.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise ClientError(f"no job {job_id!r} (unknown, or dropped from the history)", status=404)
    return job


@router.get("/jobs", tags=["jobs"], summary="Recent jobs, newest first")
def list_jobs(request: Request, limit: int = Query(20, ge=1, le=500)) -> dict[str, Any]:
    queue = request.app.state.queue
    return {"jobs": [queue.snapshot(job) for job in queue.recent(limit)]}


@router.get("/jobs/{job_id}", tags=["jobs"], summary="A job's state, progress and result")
def get_job(request: Request, job_id: str) -> dict[str, Any]:
    return request.app.state.queue.snapshot(_job(request, job_id))


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], summary="Cancel a job (queued: now; running: at its next step)")
def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    queue = request.app.state.queue
    job = _job(request, job_id)
    queue.cancel(job)
    return queue.snapshot(job)


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


async def job_events(request: Request, job: Job) -> AsyncIterator[str]:
    """status on every status/position change, progress on every step, done (the job JSON) at the end."""
    queue = request.app.state.queue
    sent_statuses, sent_position = 0, None
    seen_progress = None
    seen_version = -1
    quiet = 0.0
    while True:
        version, statuses, position = queue.state(job)
        if version != seen_version:
            seen_version, quiet = version, 0.0
            # Every status change is sent, even one shorter than a poll (a fast job's "running").
            for index in range(sent_statuses, len(statuses)):
                last = index == len(statuses) - 1
                yield _event("status", {"status": statuses[index], "position": position if last else None})
            if len(statuses) == sent_statuses and position != sent_position:
                yield _event("status", {"status": statuses[-1], "position": position})
            sent_statuses, sent_position = len(statuses), position
            if job.progress is not None and job.progress != seen_progress:
                seen_progress = job.progress
                yield _event("progress", {"step": job.progress[0], "total": job.progress[1]})
            if job.is_finished:
                yield _event("done", queue.snapshot(job))
                return
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_SECONDS)
        quiet += POLL_SECONDS
        if quiet >= HEARTBEAT_SECONDS:
            quiet = 0.0
            yield ": keep-alive\n\n"


@router.get(
    "/jobs/{job_id}/events", tags=["jobs"], summary="Server-Sent Events: status, progress, done",
    response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request, job_id: str) -> StreamingResponse:
    job = _job(request, job_id)
    return StreamingResponse(
        job_events(request, job), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/results/{job_id}/{name}", tags=["jobs"], summary="A result PNG (recipe embedded) or video, as a download",
    response_class=FileResponse, responses={200: {"content": {"image/png": {}}}},
)
def result_file(request: Request, job_id: str, name: str) -> FileResponse:
    output = request.app.state.settings.output.resolve()
    if not (JOB_ID.fullmatch(job_id) and RESULT_NAME.fullmatch(name)):
        raise ClientError("no such result", status=404)
    path = (output / job_id / name).resolve()
    # Names are checked above; resolving again guards against links pointing out of the folder.
    if not path.is_relative_to(output) or not path.is_file():
        raise ClientError("no such result", status=404)
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix[1:]], filename=name)


# -- what the server offers ------------------------------------------------------------------


@router.get("/models", tags=["server"], summary="Models clients may name")
def models(request: Request) -> dict[str, Any]:
    catalogue = request.app.state.catalogue
    current = catalogue.current
    return {
        "models": [{"name": name, "configured": name in catalogue.configured,
                    "current": current is not None and catalogue.configured.get(name, name) == current}
                   for name in catalogue.names()],
        "loras": list(catalogue.loras),
    }


@router.get("/engines", tags=["server"], summary="Engines and their options")
def engines(request: Request) -> dict[str, Any]:
    from canvaslab.engines import engine_class, engine_names

    rows = []
    for name in engine_names():
        try:
            cls = engine_class(name)
        except Exception as exc:  # noqa: BLE001 - an engine whose back end is missing is listed as such
            rows.append({"name": name, "available": False, "error": str(exc)})
            continue
        rows.append({"name": name, "available": True, "description": cls.description, "uses_prompt": cls.uses_prompt,
                     "options": cls.Options.model_json_schema().get("properties", {})})
    return {"engines": rows, "default": request.app.state.settings.engine}


@router.get("/samplers", tags=["server"], summary="Samplers (scheduler names and A1111 labels)")
def samplers() -> dict[str, Any]:
    from canvaslab.engines.diffusion.schedulers import SCHEDULERS

    return {"samplers": [{"name": name, "a1111_name": spec.a1111_name} for name, spec in SCHEDULERS.items()]}


@router.get("/health", tags=["server"], summary="Liveness (open without a token)")
async def health(request: Request) -> dict[str, Any]:
    # async: answered on the event loop itself, never waiting for a thread-pool thread.
    queue = request.app.state.queue
    return {"status": "ok", "queue": queue.waiting(), "workers": queue.workers, "version": __version__}
