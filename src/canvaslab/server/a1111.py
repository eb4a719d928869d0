"""The AUTOMATIC1111-compatible subset under /sdapi/v1, so existing clients (bots, Krita/Photoshop
plug-ins, scripts) work unchanged.

txt2img and img2img are synchronous for the client but go through the same job queue as the native
API (FIFO with everyone else, 429 when full). Fields map onto the native requests (see docs/server.md);
fields we do not support are logged and ignored, never a crash. Responses have A1111's shape:
{"images": [base64 PNG with the recipe], "parameters": {...}, "info": "<JSON string>"}.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from canvaslab.core.metadata import parse_parameters, read_metadata
from canvaslab.errors import InputError
from canvaslab.server.inputs import CREATIVE_ENGINES, ClientError, decode_base64_image, display_name, open_upload, prepare, task_work
from canvaslab.server.jobs import Job, QueueFull, Status

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 subset"])
log = logging.getLogger("canvaslab.server")

MAX_IMAGES = 64
INPAINTING_FILL = {0: "fill", 1: "original", 2: "latent-noise", 3: "latent-nothing"}
COMMON_FIELDS = {
    "prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler_name", "sampler_index", "scheduler",
    "width", "height", "batch_size", "n_iter", "send_images", "save_images",
}
IMG2IMG_FIELDS = COMMON_FIELDS | {
    "init_images", "mask", "mask_blur", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
    "inpainting_mask_invert", "denoising_strength",
}
A1111_SCHEDULER_WORDS = {"automatic": "", "uniform": "", "karras": "Karras"}


# -- reading A1111 fields --------------------------------------------------------------------


async def read_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClientError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ClientError("the request body must be a JSON object")
    return body


def ignored_fields(body: dict[str, Any], supported: set[str]) -> list[str]:
    """Fields we do not support: logged and reported in `info`, never an error."""
    ignored = sorted(key for key in body if key not in supported)
    if ignored:
        log.warning("A1111 API: ignoring unsupported field(s) %s", ", ".join(ignored))
    return ignored


def number(body: dict[str, Any], key: str, default: Any, kind: type = int) -> Any:
    """body[key] as int/float (A1111 clients send 1/0 and true/false alike); 422 naming the field otherwise."""
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool):
        return kind(value)
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise ClientError(f"invalid {key}={value!r}: expected a number", status=422, field=key) from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ClientError(f"invalid {key}={value!r}: expected a whole number", status=422, field=key)
    return converted


def scheduler_for(body: dict[str, Any]) -> str | None:
    """Our scheduler for A1111's sampler label ("DPM++ 2M Karras", or "DPM++ 2M" + scheduler "Karras")."""
    from canvaslab.engines.diffusion.schedulers import SCHEDULERS

    label = body.get("sampler_name") or body.get("sampler_index")
    if label in (None, ""):
        return None
    if not isinstance(label, str):
        raise ClientError(f"sampler_name must be a string, got {type(label).__name__}", status=422, field="sampler_name")
    extra = body.get("scheduler")
    word = A1111_SCHEDULER_WORDS.get(str(extra).lower(), str(extra)) if extra else ""
    wanted = f"{label} {word}".strip().lower() if word and word.lower() not in label.lower() else label.lower()
    for name, spec in SCHEDULERS.items():
        if wanted in (spec.a1111_name.lower(), name):
            return name
    offered = ", ".join(spec.a1111_name for spec in SCHEDULERS.values())
    raise ClientError(f"unknown sampler {label!r}{f' with scheduler {extra!r}' if word else ''}: choose one of {offered}",
                      field="sampler_name")


def seed_of(body: dict[str, Any]) -> int | None:
    seed = number(body, "seed", -1)
    return None if seed < 0 else seed


def image_count(body: dict[str, Any]) -> int:
    count = number(body, "batch_size", 1) * number(body, "n_iter", 1)
    if not 1 <= count <= MAX_IMAGES:
        raise ClientError(f"batch_size x n_iter must be within 1..{MAX_IMAGES}, got {count}", field="batch_size")
    return count


def common_fields(body: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": body.get("prompt", ""), "negative_prompt": body.get("negative_prompt", ""),
        "seed": seed_of(body), "steps": body.get("steps", 20), "guidance_scale": body.get("cfg_scale", 7.0),
    }
    scheduler = scheduler_for(body)
    if scheduler is not None:
        fields["scheduler"] = scheduler
    return fields


# -- running ---------------------------------------------------------------------------------


async def run_sync(request: Request, task: str, fields: dict[str, Any], image: bytes | None, mask: bytes | None,
                   count: int) -> Job:
    """Queue like any job, then wait for it: A1111 clients expect the images in the answer."""
    state = request.app.state
    prepared = await run_in_threadpool(prepare, task, fields, image, mask, state.settings, state.catalogue)
    try:
        job = state.queue.submit(task, task_work(prepared, state.settings.max_pixels, count), expected=count)
    except QueueFull as exc:
        raise ClientError(str(exc), status=429) from None
    while not job.done_flag.is_set():
        await asyncio.sleep(0.02)
    if job.status == Status.failed:
        raise ClientError(job.error or "the job failed", status=job.error_status or 500)
    return job


def response(job: Job, body: dict[str, Any], fields: dict[str, Any], ignored: list[str], model: str | None) -> dict[str, Any]:
    """A1111's answer: base64 PNGs (recipe inside), the parameters, and `info` as a JSON string."""
    datas = [image.path.read_bytes() for image in job.images]
    infotexts = [read_metadata(data).parameters or "" for data in datas]
    seeds = [image.seed for image in job.images]
    recipe = (job.recipe or {}).get("request", {})
    first_seed = seeds[0] if seeds else fields.get("seed") or -1
    info = {
        "prompt": fields.get("prompt", ""), "all_prompts": [fields.get("prompt", "")] * len(seeds),
        "negative_prompt": fields.get("negative_prompt", ""), "all_negative_prompts": [fields.get("negative_prompt", "")] * len(seeds),
        "seed": first_seed, "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds), "subseed_strength": 0,
        "width": body.get("width"), "height": body.get("height"),
        "sampler_name": body.get("sampler_name") or body.get("sampler_index"), "cfg_scale": fields.get("guidance_scale"),
        "steps": fields.get("steps"), "denoising_strength": fields.get("strength"), "batch_size": body.get("batch_size", 1),
        "sd_model_name": display_name(model) if model else None, "infotexts": infotexts,
        "job_timestamp": job.created.strftime("%Y%m%d%H%M%S"), "index_of_first_image": 0,
        "canvaslab": {"job": job.id, "engine": recipe.get("engine"), "ignored_fields": ignored, "notices": job.notices,
                      "interrupted": job.status == Status.cancelled},
    }
    send = body.get("send_images", True)
    images = [base64.b64encode(data).decode() for data in datas] if send else []
    parameters = {key: value for key, value in body.items() if key not in ("init_images", "mask")}
    parameters.update({"seed": first_seed})
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


def engine_for_txt2img(request: Request) -> str:
    engine = request.app.state.settings.engine
    return engine if engine in CREATIVE_ENGINES else "diffusion"


@router.post("/txt2img", summary="Text to image (synchronous; queued with every other job)")
async def txt2img(request: Request) -> dict[str, Any]:
    body = await read_body(request)
    ignored = ignored_fields(body, COMMON_FIELDS)
    fields = common_fields(body)
    fields["engine"] = engine_for_txt2img(request)
    for key in ("width", "height"):
        if body.get(key) is not None:
            fields[key] = body[key]
    model = request.app.state.catalogue.current
    if model:
        fields["model"] = model
    job = await run_sync(request, "generate", fields, None, None, image_count(body))
    return response(job, body, fields, ignored, model)


def _resized(data: bytes, size: tuple[int, int], mask: bool) -> bytes:
    """An image (LANCZOS) or mask (nearest, stays binary) resized to `size`, as PNG bytes."""
    import numpy as np
    from PIL import Image

    from canvaslab.core.image import encode_image

    image = Image.open(io.BytesIO(data)).convert("L" if mask else "RGB")
    image = image.resize(size, Image.Resampling.NEAREST if mask else Image.Resampling.LANCZOS)
    array = np.asarray(image)
    if mask:
        array = np.dstack([array] * 3)
    return encode_image(array, format="png")


def img2img_inputs(body: dict[str, Any], max_pixels: int) -> tuple[bytes, bytes]:
    """The init image and the mask (a full one without `mask`), both at width x height when those are given."""
    import numpy as np

    from canvaslab.core.image import encode_image

    init = body.get("init_images")
    if not isinstance(init, list) or not init:
        raise ClientError("img2img needs init_images: a list with one base64 image", field="init_images")
    if len(init) > 1:
        log.warning("A1111 API: img2img uses the first of %d init_images", len(init))
    image = decode_base64_image(init[0], "init_images")
    loaded = open_upload(image, "init_images", max_pixels)
    if body.get("mask") is not None:
        mask = decode_base64_image(body["mask"], "mask")
    else:
        # No mask: the whole picture is repainted at denoising_strength (our inpaint with a full mask).
        mask = encode_image(np.full((loaded.size[1], loaded.size[0], 3), 255, np.uint8), format="png")
    width, height = body.get("width"), body.get("height")
    if width is not None and height is not None:
        size = (number(body, "width", 0), number(body, "height", 0))
        if size[0] < 8 or size[1] < 8 or size[0] * size[1] > max_pixels:
            raise ClientError(f"width x height {size[0]}x{size[1]} is outside 8x8..{max_pixels} pixels", field="width")
        if size != loaded.size:
            # A1111 resizes the init image to width x height ("just resize"); the mask follows it.
            open_upload(mask, "mask", max_pixels)
            image, mask = _resized(image, size, False), _resized(mask, size, True)
    return image, mask


@router.post("/img2img", summary="Image to image / inpainting (synchronous; queued with every other job)")
async def img2img(request: Request) -> dict[str, Any]:
    body = await read_body(request)
    ignored = ignored_fields(body, IMG2IMG_FIELDS)
    settings = request.app.state.settings
    fields = common_fields(body)
    fill = number(body, "inpainting_fill", 1)
    if fill not in INPAINTING_FILL:
        raise ClientError(f"inpainting_fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing), got {fill}",
                          field="inpainting_fill")
    fields.update({
        "strength": number(body, "denoising_strength", 0.75, float),
        "masked_content": INPAINTING_FILL[fill],
    })
    if body.get("mask") is not None and number(body, "inpainting_mask_invert", 0):
        fields["mask_mode"] = "black"  # our mask_mode black is A1111's "inpaint not masked"
    if body.get("mask") is not None:
        fields["feather"] = number(body, "mask_blur", 4, float)
    if number(body, "inpaint_full_res", 0):
        fields["area"] = "masked"
        fields["padding"] = number(body, "inpaint_full_res_padding", 32)
    if fields["masked_content"] != "original" and fields["strength"] >= 1:
        fields["masked_content"] = "original"  # only matters below strength 1 (A1111 ignores it there too)
    image, mask = await run_in_threadpool(img2img_inputs, body, settings.max_pixels)
    model = request.app.state.catalogue.current if settings.engine in CREATIVE_ENGINES else None
    job = await run_sync(request, "inpaint", fields, image, mask, image_count(body))
    return response(job, body, fields, ignored, model)


# -- server state ----------------------------------------------------------------------------


@router.get("/sd-models", summary="Models (the server's configured ones, then the aliases)")
def sd_models(request: Request) -> list[dict[str, Any]]:
    return [{"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}
            for name in request.app.state.catalogue.names()]


@router.get("/options", summary="Options (sd_model_checkpoint is the model txt2img/img2img use)")
def get_options(request: Request) -> dict[str, Any]:
    current = request.app.state.catalogue.current
    return {"sd_model_checkpoint": display_name(current) if current else None, "samples_format": "png",
            "sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1}


@router.post("/options", summary="Set options: sd_model_checkpoint switches the model; others are ignored")
async def set_options(request: Request) -> dict[str, Any]:
    body = await read_body(request)
    catalogue = request.app.state.catalogue
    ignored_fields(body, {"sd_model_checkpoint"})
    if "sd_model_checkpoint" in body:
        name = body["sd_model_checkpoint"]
        if not isinstance(name, str):
            raise ClientError("sd_model_checkpoint must be a model name (string)", status=422, field="sd_model_checkpoint")
        # A1111 titles look like "name.safetensors [hash]": the hash part is not part of the name.
        catalogue.current = catalogue.resolve_model(re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", name))
    return {}


@router.get("/samplers", summary="Samplers by their A1111 labels")
def samplers() -> list[dict[str, Any]]:
    from canvaslab.engines.diffusion.schedulers import SCHEDULERS

    return [{"name": spec.a1111_name, "aliases": [name], "options": {}} for name, spec in SCHEDULERS.items()]


@router.get("/progress", summary="Progress of the running job")
def progress(request: Request) -> dict[str, Any]:
    queue = request.app.state.queue
    running = queue.running()
    job = running[0] if running else None
    state = {"skipped": False, "interrupted": False, "job": "", "job_count": queue.waiting() + len(running),
             "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    step, total = job.progress or (0, 0)
    fraction = min(1.0, (len(job.images) + (step / total if total else 0.0)) / max(job.expected, 1))
    elapsed = (datetime.now(timezone.utc) - (job.started or job.created)).total_seconds()
    eta = elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0
    state.update({"interrupted": job.cancel_flag.is_set(), "job": job.id, "job_timestamp": job.created.strftime("%Y%m%d%H%M%S"),
                  "job_no": len(job.images), "sampling_step": step, "sampling_steps": total})
    return {"progress": fraction, "eta_relative": eta, "state": state, "current_image": None, "textinfo": None}


@router.post("/interrupt", summary="Stop the running job(s) at their next step")
def interrupt(request: Request) -> dict[str, Any]:
    queue = request.app.state.queue
    for job in queue.running():
        queue.cancel(job)
    return {}


@router.post("/png-info", summary="The infotext and recipe embedded in a PNG")
async def png_info(request: Request) -> dict[str, Any]:
    body = await read_body(request)
    data = decode_base64_image(body.get("image"), "image")
    try:
        metadata = read_metadata(data)
    except InputError as exc:
        raise ClientError(f"image: {exc}", field="image") from None
    text = metadata.parameters or ""
    items: dict[str, Any] = {"parameters": text} if text else {}
    if metadata.recipe is not None:
        items["canvaslab"] = json.dumps(metadata.recipe)
    parsed: dict[str, Any] = {}
    if text:
        prompt, negative, settings = parse_parameters(text)
        parsed = {"Prompt": prompt, "Negative prompt": negative, **settings}
    return {"info": text, "items": items, "parameters": parsed}
