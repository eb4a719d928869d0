"""The AUTOMATIC1111-compatible subset under /sdapi/v1, so existing clients (bots, Krita/Photoshop
plug-ins, scripts) work unchanged.

txt2img and img2img are synchronous for the client but go through the same job queue as the native
API (FIFO with everyone else, 429 when full). Fields map onto the native requests (see docs/server.md);
fields we do not support are logged and ignored, never a crash; errors name the A1111 field. Responses
have A1111's shape: {"images": [base64 PNG with the recipe], "parameters": {...}, "info": "<JSON string>"}.
Routes for what we do not have (VAEs, face restorers, scripts, ...) answer empty lists, as A1111 does
when nothing is installed, so clients that list them at start-up keep working.

ControlNet and IP-Adapter units come as the sd-webui-controlnet extension takes them (alwayson_scripts.ControlNet
.args, or the older controlnet_units field) and its routes are under /controlnet (`controlnet_router`): see
docs/control.md for the field mapping.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import math
import threading
from datetime import datetime, timezone
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from canvaslab import __version__
from canvaslab.core.metadata import parse_parameters, read_metadata
from canvaslab.errors import InputError
from canvaslab.server.inputs import (
    CREATIVE_ENGINES, ClientError, check_field_sizes, decode_base64_image, display_name, hide_paths, open_upload, parse_json, prepare,
    task_work, without_hash,
)
from canvaslab.server.jobs import Job, QueueFull, Status
from canvaslab.server.masks import run_at_once
from canvaslab.server.settings import is_loopback

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 subset"])
log = logging.getLogger("canvaslab.server")

MAX_IMAGES = 64
INPAINTING_FILL = {0: "fill", 1: "original", 2: "latent-noise", 3: "latent-nothing"}
# The sd-webui-controlnet extension's fields: units in alwayson_scripts.ControlNet.args, or (older clients)
# in controlnet_units. Held only to the nesting bounds when the body is read (they carry base64 images).
SCRIPT_FIELDS = {"alwayson_scripts", "controlnet_units"}
COMMON_FIELDS = {
    "prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler_name", "sampler_index", "scheduler",
    "width", "height", "batch_size", "n_iter", "send_images", "save_images", *SCRIPT_FIELDS,
}
IMG2IMG_FIELDS = COMMON_FIELDS | {
    "init_images", "mask", "mask_blur", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
    "inpainting_mask_invert", "denoising_strength",
}
A1111_SCHEDULER_WORDS = {"automatic": "", "uniform": "", "karras": "Karras", "sgm_uniform": "SGM Uniform"}
IMAGE_FIELDS = {"init_images", "mask", "image"}
# Our request fields as the A1111 fields they came from, so an error names what the client sent.
A1111_NAMES = {
    "size": "width", "strength": "denoising_strength", "guidance_scale": "cfg_scale", "feather": "mask_blur",
    "padding": "inpaint_full_res_padding", "image": "init_images", "masked_content": "inpainting_fill",
    "mask_mode": "inpainting_mask_invert", "scheduler": "sampler_name",
    "control": "alwayson_scripts.ControlNet", "ip_adapter": "alwayson_scripts.ControlNet",
}


# -- reading A1111 fields --------------------------------------------------------------------


async def read_body(request: Request, supported: set[str] | None = None) -> dict[str, Any]:
    """The JSON object of the body (strict: see `inputs.parse_json`), its fields bounded in size.

    With `supported` given, only those fields are held to the text and list bounds; the rest are
    ignored anyway (but still bounded in nesting and keys, as they are echoed in `parameters`).
    """
    raw = await request.body()
    body = parse_json(raw) if raw.strip() else None
    if not isinstance(body, dict):
        raise ClientError("the request body must be a JSON object")
    unread = set(body) - (supported or set(body)) | IMAGE_FIELDS | SCRIPT_FIELDS
    check_field_sizes(body, unread=unread)
    return body


def ignored_fields(body: dict[str, Any], supported: set[str]) -> list[str]:
    """Fields we do not support: logged and reported in `info`, never an error (other alwayson scripts too)."""
    ignored = sorted(key for key in body if key not in supported)
    scripts = body.get("alwayson_scripts")
    if "alwayson_scripts" in supported and "alwayson_scripts" in body:
        if not isinstance(scripts, dict) or not any(name.lower() == "controlnet" for name in scripts):
            ignored.append("alwayson_scripts")  # nothing in it is read
        else:
            ignored += sorted(f"alwayson_scripts.{name}" for name, value in scripts.items()
                              if name.lower() != "controlnet" and value not in (None, {}, {"args": []}))
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
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    try:
        converted = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ClientError(f"invalid {key}={shown}: expected a number", status=422, field=key) from None
    if isinstance(converted, float) and not math.isfinite(converted):
        raise ClientError(f"invalid {key}={shown}: expected a finite number", status=422, field=key)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ClientError(f"invalid {key}={shown}: expected a whole number", status=422, field=key)
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
        "seed": seed_of(body), "steps": number(body, "steps", 20), "guidance_scale": number(body, "cfg_scale", 7.0, float),
    }
    scheduler = scheduler_for(body)
    if scheduler is not None:
        fields["scheduler"] = scheduler
    return fields


# -- running ---------------------------------------------------------------------------------


async def run_sync(request: Request, task: str, fields: dict[str, Any], image: bytes | None, mask: bytes | None,
                   count: int, names: dict[str, str] = A1111_NAMES) -> tuple[Job, list[str]]:
    """Queue like any job, then wait for it: A1111 clients expect the images in the answer.

    A1111 clients send every field whatever the engine: the ones the engine does not read are left out
    and returned (as the client named them) with the job. A refusal names the client's field: `names`
    maps our request fields to the A1111 ones.
    """
    state = request.app.state
    try:
        prepared = await run_in_threadpool(
            functools.partial(prepare, drop_unused=True), task, fields, image, mask, state.settings, state.catalogue)
    except ClientError as exc:
        field, message = names.get(exc.field or "", exc.field), exc.message
        if exc.field and field and message.startswith(exc.field):
            message = field + message[len(exc.field):]  # the sentence names the field as the client sent it too
        raise ClientError(message, status=exc.status, field=field) from None
    try:
        job = state.queue.submit(task, task_work(prepared, state.settings.max_pixels, count), expected=count)
    except QueueFull as exc:
        raise ClientError(str(exc), status=429) from None
    waited = 0
    while not job.done_flag.is_set():
        await asyncio.sleep(0.02)
        waited += 1
        if waited % 10 == 0 and await request.is_disconnected():
            # the client gave up (timed out, maybe to retry): its job would hold the worker for nobody
            log.info("A1111 API: the client of job %s went away: cancelling it", job.id)
            state.queue.cancel(job)
            raise ClientError("the client went away", status=499)
    if job.status == Status.failed:
        raise ClientError(job.error or "the job failed", status=job.error_status or 500)
    return job, [names.get(name, name) for name in prepared.dropped]


def response(job: Job, body: dict[str, Any], fields: dict[str, Any], ignored: list[str], model: str | None) -> Response:
    """A1111's answer: base64 PNGs (recipe inside), the parameters, and `info` as a JSON string.

    Made in a worker thread (the routes await it there) and as bytes: a big batch is tens of MB of base64,
    and encoding it, then one json.dumps of it, held the event loop (and the GIL: each is one C call)
    while every other client waited. base64 text needs no JSON escaping, so the images are joined in as
    they are, encoded in pieces that let the loop's thread in between."""
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
    parameters = {key: value for key, value in body.items() if key not in ("init_images", "mask")}
    parameters.update({"seed": first_seed})
    rest = json.dumps({"parameters": parameters, "info": json.dumps(info)}, allow_nan=False, separators=(",", ":"))
    images = b",".join(b'"' + _base64(data) + b'"' for data in datas) if send else b""
    return Response(b'{"images":[' + images + b"]," + rest[1:].encode(), media_type="application/json")


def _base64(data: bytes, piece: int = 3 << 18) -> bytes:
    """base64 of `data` in pieces of whole 3-byte groups (so they join into the one text): ~2 ms each."""
    view = memoryview(data)
    return b"".join(base64.b64encode(view[start:start + piece]) for start in range(0, len(data), piece))


def engine_for_txt2img(request: Request) -> str:
    engine = request.app.state.settings.engine
    return engine if engine in CREATIVE_ENGINES else "diffusion"


@router.post("/txt2img", summary="Text to image (synchronous; queued with every other job)")
async def txt2img(request: Request) -> Response:
    body = await read_body(request, COMMON_FIELDS)
    ignored = ignored_fields(body, COMMON_FIELDS)
    fields = common_fields(body)
    fields["engine"] = engine_for_txt2img(request)
    for key in ("width", "height"):
        if body.get(key) is not None:
            fields[key] = number(body, key, None)
    model = request.app.state.catalogue.current
    if model:
        fields["model"] = model
    units, unit_ignored, names = controlnet_units(body, txt2img=True)
    fields.update(units)
    job, dropped = await run_sync(request, "generate", fields, None, None, image_count(body), names)
    return await run_in_threadpool(response, job, body, fields, sorted({*ignored, *dropped, *unit_ignored}), model)


def a1111_mask(data: bytes, max_pixels: int) -> np.ndarray:
    """A mask as A1111 reads it: an RGBA mask with transparency is its alpha (opaque = inpaint, what
    mask painters export on a transparent background), any other its grey level (white = inpaint)."""
    from canvaslab.core.image import load_mask

    loaded = open_upload(data, "mask", max_pixels)  # EXIF orientation applied, like the image's
    if loaded.alpha is not None and int(loaded.alpha.min()) < 255:
        return loaded.alpha > 128
    return load_mask(loaded.rgb, mode="white", max_pixels=max_pixels)


def img2img_inputs(body: dict[str, Any], max_pixels: int, resize_to: tuple[int, int] | None) -> tuple[bytes, bytes]:
    """The init image and the mask (full without `mask`; white = inpaint), at `resize_to` when given.

    Both go through `core.image` like every other upload: EXIF orientation applied, pixel limit checked.
    """
    from canvaslab.core.geometry import resize_mask, resize_rgb
    from canvaslab.core.image import encode_image

    init = body.get("init_images")
    if not isinstance(init, list) or not init:
        raise ClientError("img2img needs init_images: a list with one base64 image", field="init_images")
    if len(init) > 1:
        log.warning("A1111 API: img2img uses the first of %d init_images", len(init))
    image = decode_base64_image(init[0], "init_images")
    loaded = open_upload(image, "init_images", max_pixels)
    if body.get("mask") is not None:
        fill = a1111_mask(decode_base64_image(body["mask"], "mask"), max_pixels)
        if fill.shape != loaded.rgb.shape[:2]:
            fill = resize_mask(fill, loaded.size)  # A1111 resizes a mask of another size to the image
    else:
        # No mask: the whole picture is repainted at denoising_strength (our inpaint with a full mask).
        fill = np.ones(loaded.rgb.shape[:2], bool)
    if resize_to is not None and resize_to != loaded.size:
        # A1111's "just resize": the image (as displayed) and the mask follow width x height.
        image = encode_image(resize_rgb(loaded.rgb, resize_to), format="png")
        fill = resize_mask(fill, resize_to)
    return image, encode_image(np.dstack([fill.astype(np.uint8) * 255] * 3), format="png")


def a1111_size(body: dict[str, Any], max_pixels: int) -> tuple[int, int] | None:
    """width x height when both are given, within 8x8 .. the pixel limit."""
    if body.get("width") is None or body.get("height") is None:
        return None
    size = (number(body, "width", 0), number(body, "height", 0))
    if size[0] < 8 or size[1] < 8 or size[0] * size[1] > max_pixels:
        raise ClientError(f"width x height {size[0]}x{size[1]} is outside 8x8 .. the server's pixel limit of "
                          f"{max_pixels:,}", field="width")
    return size


@router.post("/img2img", summary="Image to image / inpainting (synchronous; queued with every other job)")
async def img2img(request: Request) -> Response:
    body = await read_body(request, IMG2IMG_FIELDS)
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
    if fields["masked_content"] != "original" and fields["strength"] >= 1:
        fields["masked_content"] = "original"  # only matters below strength 1 (A1111 ignores it there too)
    resize_to = None
    if number(body, "inpaint_full_res", 0):
        # A1111's "only masked": the picture keeps its size; width x height is what the crop is
        # worked at, which means something to a model with a native resolution only.
        fields["area"] = "masked"
        fields["padding"] = number(body, "inpaint_full_res_padding", 32)
        if settings.engine in CREATIVE_ENGINES:
            if (size := a1111_size(body, settings.max_pixels)) is not None:
                fields["size"] = max(size)
        else:
            ignored = sorted({*ignored, *(key for key in ("width", "height") if key in body)})
    else:
        resize_to = a1111_size(body, settings.max_pixels)
    image, mask = await run_in_threadpool(img2img_inputs, body, settings.max_pixels, resize_to)
    model = request.app.state.catalogue.current if settings.engine in CREATIVE_ENGINES else None
    units, unit_ignored, names = controlnet_units(body, txt2img=False)
    fields.update(units)
    job, dropped = await run_sync(request, "inpaint", fields, image, mask, image_count(body), names)
    return await run_in_threadpool(response, job, body, fields, sorted({*ignored, *dropped, *unit_ignored}), model)


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
    body = await read_body(request, {"sd_model_checkpoint"})
    catalogue = request.app.state.catalogue
    ignored_fields(body, {"sd_model_checkpoint"})
    if "sd_model_checkpoint" in body:
        name = body["sd_model_checkpoint"]
        if not isinstance(name, str):
            raise ClientError("sd_model_checkpoint must be a model name (string)", status=422, field="sd_model_checkpoint")
        # A1111 titles look like "name.safetensors [hash]": the hash part is not part of the name.
        catalogue.current = catalogue.resolve_model(without_hash(name))
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
    state.update({"interrupted": job.cancelling, "skipped": job.skipping, "job": job.id,
                  "job_timestamp": job.created.strftime("%Y%m%d%H%M%S"), "job_no": len(job.images),
                  "sampling_step": step, "sampling_steps": total})
    return {"progress": fraction, "eta_relative": eta, "state": state, "current_image": None, "textinfo": None}


@router.post("/interrupt", summary="Stop the running job(s) at their next step")
def interrupt(request: Request) -> dict[str, Any]:
    queue = request.app.state.queue
    for job in queue.running():
        queue.cancel(job)
    return {}


@router.post("/skip", summary="Drop the image the running job(s) are making and go on with the next one")
def skip(request: Request) -> dict[str, Any]:
    queue = request.app.state.queue
    for job in queue.running():
        queue.skip(job)
    return {}


@router.get("/schedulers", summary="Noise schedules (automatic: the sampler's own; karras)")
def schedulers() -> list[dict[str, Any]]:
    return [{"name": name, "label": name.capitalize(), "aliases": None, "default_rho": -1, "need_inner_model": False}
            for name in ("automatic", "karras")]


@router.get("/cmd-flags", summary="The server's start-up flags A1111 clients look at (no paths)")
def cmd_flags(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    return {"api": True, "nowebui": False, "listen": not is_loopback(settings.host), "port": settings.port,
            "api_auth": None, "canvaslab": __version__}


# What the sd-webui-controlnet extension adds to A1111's script list. Clients decide from it whether the
# extension is there: webuiapi sends `ControlNet: {"args": []}` on calls without units only when it sees
# "controlnet m2m"; otherwise its shared default dict replays the previous call's units into the next one.
CONTROLNET_SCRIPTS = ["controlnet", "controlnet m2m"]


@router.get("/scripts", summary="Scripts (ControlNet's when the server offers ControlNets or IP-Adapters; "
            "script arguments are ignored)")
def scripts(request: Request) -> dict[str, list[str]]:
    catalogue = request.app.state.catalogue
    offered = list(CONTROLNET_SCRIPTS) if catalogue.controlnets or catalogue.ip_adapters else []
    return {"txt2img": offered, "img2img": list(offered)}


@router.get("/loras", summary="The server's LoRAs, by name")
def loras(request: Request) -> list[dict[str, Any]]:
    names = request.app.state.catalogue.loras
    return [{"name": name.rsplit(".", 1)[0], "alias": name, "path": None, "metadata": {}} for name in names]


@router.get("/embeddings", summary="Textual inversion embeddings (none)")
def embeddings() -> dict[str, dict[str, Any]]:
    return {"loaded": {}, "skipped": {}}


@router.post("/refresh-checkpoints", summary="Re-list models (the list is fixed at start-up: nothing to do)")
def refresh_checkpoints() -> None:
    return None


def _empty_list() -> list[Any]:
    return []


for _name, _what in (("sd-vae", "VAEs"), ("face-restorers", "face restorers"), ("realesrgan-models", "RealESRGAN models"),
                     ("prompt-styles", "prompt styles"), ("hypernetworks", "hypernetworks"),
                     ("latent-upscale-modes", "latent upscale modes")):
    router.add_api_route(f"/{_name}", _empty_list, methods=["GET"], summary=f"{_what.capitalize()} (none on this server)",
                         name=f"a1111_{_name.replace('-', '_')}")


# -- extras and interrogate ------------------------------------------------------------------

# A1111's built-in resamplers; "None" leaves the picture as it is (A1111 skips the upscale then).
UPSCALERS = {"None": None, "Lanczos": "LANCZOS", "Nearest": "NEAREST"}
EXTRAS_FIELDS = {"image", "resize_mode", "upscaling_resize", "upscaling_resize_w", "upscaling_resize_h",
                 "upscaling_crop", "upscaler_1", "upscaler_2", "extras_upscaler_2_visibility"}
_extras_slots = threading.BoundedSemaphore(2)  # resizes run in the request threads: two at a time


@router.get("/upscalers", summary="Upscalers: None, Lanczos, Nearest")
def upscalers() -> list[dict[str, Any]]:
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for name in UPSCALERS]


def _upscaler(body: dict[str, Any], field: str) -> str | None:
    name = body.get(field) or "None"
    if not isinstance(name, str) or name not in UPSCALERS:
        raise ClientError(f"unknown upscaler {str(name)[:40]!r}: this server has {', '.join(UPSCALERS)}", field=field)
    return UPSCALERS[name]


def upscale(data: bytes, body: dict[str, Any], max_pixels: int) -> bytes:
    """A1111's extras upscale with the built-in resamplers: by a factor, or to width x height (optionally cropped)."""
    from PIL import Image

    from canvaslab.core.image import encode_image

    first, second = _upscaler(body, "upscaler_1"), _upscaler(body, "upscaler_2")
    loaded = open_upload(data, "image", max_pixels)
    if first is None:
        return encode_image(loaded.rgb, format="png")
    width, height = loaded.size
    to_size = number(body, "resize_mode", 0) == 1
    if to_size:
        target = (number(body, "upscaling_resize_w", 512), number(body, "upscaling_resize_h", 512))
        if min(target) < 1 or target[0] * target[1] > max_pixels:
            raise ClientError(f"upscaling to {target[0]}x{target[1]} is outside 1x1 .. the server's pixel limit of "
                              f"{max_pixels:,}", field="upscaling_resize_w")
        scale = max(target[0] / width, target[1] / height)
    else:
        scale = number(body, "upscaling_resize", 2.0, float)
    # A1111 rounds the upscaled size down to a multiple of 8.
    size = (int(width * scale) // 8 * 8, int(height * scale) // 8 * 8)
    if min(size) < 8 or size[0] * size[1] > max_pixels:
        raise ClientError(f"upscaling {width}x{height} by {scale:g} gives {size[0]}x{size[1]}, outside 8x8 .. the "
                          f"server's pixel limit of {max_pixels:,}", field="upscaling_resize")
    with _extras_slots:
        source = Image.fromarray(loaded.rgb)
        image = source.resize(size, getattr(Image.Resampling, first))
        visibility = number(body, "extras_upscaler_2_visibility", 0.0, float)
        if second is not None and visibility > 0:
            image = Image.blend(image, source.resize(size, getattr(Image.Resampling, second)), min(visibility, 1.0))
        if to_size and body.get("upscaling_crop", True):
            canvas = Image.new("RGB", target)
            canvas.paste(image, (target[0] // 2 - image.width // 2, target[1] // 2 - image.height // 2))
            image = canvas
        return encode_image(np.asarray(image), format="png")


@router.post("/extra-single-image", summary="Upscale one picture (None, Lanczos, Nearest; face restoration ignored)")
async def extra_single_image(request: Request) -> dict[str, Any]:
    body = await read_body(request, EXTRAS_FIELDS)
    ignored_fields(body, EXTRAS_FIELDS)
    data = decode_base64_image(body.get("image"), "image")
    # the upscale and its base64 in a worker thread: an upscaled picture is big, the event loop serves others
    image = await run_in_threadpool(lambda: _base64(upscale(data, body, request.app.state.settings.max_pixels)).decode())
    return {"html_info": "", "image": image}


INTERROGATE_QUESTIONS = {
    "clip": "Describe this picture in one sentence.",
    "deepdanbooru": "List what is in this picture as short comma-separated tags.",
}


def unified_model(request: Request) -> str | None:
    """The unified (Show-o) model interrogate asks: the server's current one when its engine is unified,
    else the first configured model that is one, else the built-in alias when aliases are offered."""
    settings, catalogue = request.app.state.settings, request.app.state.catalogue
    if settings.engine == "unified" and catalogue.current:
        return catalogue.current
    for model in catalogue.configured.values():
        if _is_unified(model):
            return model
    return "show-o" if catalogue.offers_aliases else None


def _is_unified(model: str) -> bool:
    from canvaslab.engines.unified.bundle import resolve_model_name
    from canvaslab.engines.unified.loading import read_unified_config
    from canvaslab.errors import CanvaslabError

    try:
        read_unified_config(resolve_model_name(model))
    except (CanvaslabError, OSError, ValueError):
        return False
    return True


@router.post("/interrogate", summary="A caption of a picture, answered by the unified model (Show-o)")
async def interrogate(request: Request) -> dict[str, Any]:
    body = await read_body(request, {"model", "image"})
    name = body.get("model") or "clip"
    if not isinstance(name, str) or name not in INTERROGATE_QUESTIONS:
        raise ClientError(f"unknown interrogate model {str(name)[:40]!r}: choose {' or '.join(INTERROGATE_QUESTIONS)}",
                          field="model")
    model = await run_in_threadpool(unified_model, request)
    if model is None:
        raise ClientError("interrogate needs a unified model (Show-o): start the server with --model show-o "
                          "(or a Show-o folder)", status=404, field="model")
    image = decode_base64_image(body.get("image"), "image")
    fields = {"questions": [INTERROGATE_QUESTIONS[name]], "model": model}
    job, _ = await run_sync(request, "understand", fields, image, None, 1, names={})
    return {"caption": (job.answers or [{"answer": ""}])[0]["answer"]}


@router.post("/png-info", summary="The infotext and recipe embedded in a PNG")
async def png_info(request: Request) -> dict[str, Any]:
    body = await read_body(request)
    data = decode_base64_image(body.get("image"), "image")
    try:
        metadata = read_metadata(data)
    except InputError as exc:
        raise ClientError(f"image: {exc}", field="image") from None
    except (RecursionError, ValueError):  # a recipe text nested thousands deep, and the like
        raise ClientError("image: its embedded recipe or parameters could not be read", field="image") from None
    text = metadata.parameters or ""
    items: dict[str, Any] = {"parameters": text} if text else {}
    if metadata.recipe is not None:
        items["canvaslab"] = json.dumps(metadata.recipe)
    parsed: dict[str, Any] = {}
    if text:
        prompt, negative, settings = parse_parameters(text)
        parsed = {"Prompt": prompt, "Negative prompt": negative, **settings}
    return {"info": text, "items": items, "parameters": parsed}


# -- ControlNet (the sd-webui-controlnet extension's API) --------------------------------------

controlnet_router = APIRouter(prefix="/controlnet", tags=["AUTOMATIC1111 ControlNet extension"])
CONTROLNET_VERSION = 2  # the extension's API version clients check
MAX_UNITS = 8
def _disabled(value: Any) -> bool:
    """A unit's `enabled` as the extension's pydantic model reads it: false, 0 and "false"/"0"/"no"/"off"."""
    if isinstance(value, str):
        return value.strip().lower() in ("false", "0", "no", "off", "n", "f")
    return value is False or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0)


UNIT_FIELDS = {"enabled", "image", "input_image", "mask", "module", "model", "weight", "resize_mode", "low_vram",
               "processor_res", "threshold_a", "threshold_b", "guidance_start", "guidance_end", "control_mode",
               "guessmode", "pixel_perfect", "hr_option"}
# Read by the extension, not here: canvaslab always makes maps at the working size (pixel perfect), has no
# low-VRAM or hires-fix passes. Reported in `info` as ignored, like every field we do not read.
UNIT_NOT_READ = ("processor_res", "low_vram", "hr_option", "pixel_perfect")
RESIZE_MODES = {0: "resize", 1: "crop", 2: "fill", "just resize": "resize", "crop and resize": "crop",
                "resize and fill": "fill", "scale to fit (inner fit)": "fill", "inner fit (scale to fit)": "fill",
                "envelope (outer fit)": "crop", "outer fit (shrink to fit)": "crop"}
CONTROL_MODES = {0: "balanced", 1: "prompt", 2: "control", "balanced": "balanced",
                 "my prompt is more important": "prompt", "controlnet is more important": "control"}
NO_MODEL = ("", "none", "None")


def _unit_list(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """(where, unit) for every unit the body carries, by the name the client used."""
    found: list[tuple[str, Any]] = []
    scripts = body.get("alwayson_scripts")
    if isinstance(scripts, dict):
        script = next((value for name, value in scripts.items() if name.lower() == "controlnet"), None)
        args = script.get("args") if isinstance(script, dict) else None
        if script is not None and not isinstance(args, list):
            raise ClientError("alwayson_scripts.ControlNet must be {\"args\": [unit, ...]}", field="alwayson_scripts")
        found += [(f"alwayson_scripts.ControlNet.args[{i}]", unit) for i, unit in enumerate(args or [])]
    if isinstance(body.get("controlnet_units"), list):
        found += [(f"controlnet_units[{i}]", unit) for i, unit in enumerate(body["controlnet_units"])]
    if len(found) > MAX_UNITS:
        raise ClientError(f"{len(found)} ControlNet units; the server takes at most {MAX_UNITS}", field="alwayson_scripts")
    return found


def _choice(value: Any, table: dict[Any, str], where: str, what: str) -> str:
    key = value.lower() if isinstance(value, str) else value
    if not isinstance(key, (str, int, float)) or isinstance(key, bool) or key not in table:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ClientError(f"{where}: unknown {what} {shown}", status=422, field=where)
    return table[key]


def _unit_number(unit: dict[str, Any], key: str, default: Any, where: str) -> Any:
    """A unit's number, a refusal naming the unit's field (`alwayson_scripts.ControlNet.args[0].weight`)."""
    try:
        return number(unit, key, default, float)
    except ClientError as exc:
        raise ClientError(exc.message, status=exc.status, field=f"{where}.{key}") from None


def controlnet_units(body: dict[str, Any], *, txt2img: bool) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """The body's ControlNet units as our request fields (control units and, for ip-adapter modules, IP-Adapters),
    the unit fields we do not read (named as the client sent them), and our field names -> theirs for errors."""
    from canvaslab.engines.diffusion.preprocessors import A1111_MODULES, PREPROCESSORS

    control: list[dict[str, Any]] = []
    adapters: list[dict[str, Any]] = []
    ignored: list[str] = []
    names = dict(A1111_NAMES)
    for where, unit in _unit_list(body):
        if not isinstance(unit, dict):
            raise ClientError(f"{where} must be an object (a ControlNet unit)", field=where)
        if _disabled(unit.get("enabled")) or unit.get("model") in NO_MODEL and unit.get("module") in (None, *NO_MODEL):
            continue
        ignored += [f"{where}.{key}" for key in sorted(unit) if key not in UNIT_FIELDS or key in UNIT_NOT_READ]
        model, module = unit.get("model"), str(unit.get("module") or "none")
        if not isinstance(model, str) or model in NO_MODEL:
            raise ClientError(f"{where}.model: a unit with module {module!r} needs a ControlNet model "
                              "(see /controlnet/model_list)", field=f"{where}.model")
        image = unit.get("image") if unit.get("image") not in (None, "") else unit.get("input_image")
        if isinstance(image, dict):  # newer extension versions: {"image": ..., "mask": ...}
            image = image.get("image")
        if unit.get("mask") not in (None, ""):
            ignored.append(f"{where}.mask")  # the img2img mask is the one inpainted
        weight = _unit_number(unit, "weight", 1.0, where)
        if module.lower().startswith("ip-adapter"):
            if image in (None, ""):
                raise ClientError(f"{where}.image: an IP-Adapter unit needs a reference image", field=f"{where}.image")
            names.update({f"ip_adapter.{len(adapters)}{suffix}": where + suffix for suffix in ("", ".model", ".images")})
            adapters.append({"model": model, "weight": weight, "images": [image]})
            ignored += [f"{where}.{key}" for key in ("threshold_a", "threshold_b", "guidance_start", "guidance_end",
                                                     "control_mode", "resize_mode") if key in unit]
            continue
        if txt2img and image in (None, ""):
            raise ClientError(f"{where}.image: txt2img has no input image to control with; send the unit an image",
                              field=f"{where}.image")
        ours = A1111_MODULES.get(module, module)
        setting = {"threshold_a": "a", "threshold_b": "b"}
        spec: dict[str, Any] = {
            "model": model, "weight": weight, "preprocessor": ours,
            "start": _unit_number(unit, "guidance_start", 0.0, where), "end": _unit_number(unit, "guidance_end", 1.0, where),
            "mode": _choice(unit.get("control_mode", unit.get("guessmode") and 2 or 0), CONTROL_MODES,
                            f"{where}.control_mode", "control mode"),
            "resize": _choice(unit.get("resize_mode", 1), RESIZE_MODES, f"{where}.resize_mode", "resize mode"),
            **({"image": image} if image not in (None, "") else {}),
        }
        for key, slot in setting.items():
            if unit.get(key) in (None, -1):
                continue
            if ours in PREPROCESSORS and getattr(PREPROCESSORS[ours], slot) is not None:
                spec[key] = _unit_number(unit, key, 0.0, where)
            else:
                ignored.append(f"{where}.{key}")  # the extension sends 64 whatever the module; this one reads none
        index = len(control)
        names.update({f"control.{index}": where, **{f"control.{index}.{ours_key}": f"{where}.{theirs}" for ours_key, theirs in (
            ("model", "model"), ("image", "image"), ("preprocessor", "module"), ("weight", "weight"),
            ("start", "guidance_start"), ("end", "guidance_end"), ("threshold_a", "threshold_a"),
            ("threshold_b", "threshold_b"))}})
        control.append(spec)
    fields = {**({"control": control} if control else {}), **({"ip_adapter": adapters} if adapters else {})}
    return fields, ignored, names


@controlnet_router.get("/version", summary="The ControlNet extension API version clients check")
def controlnet_version() -> dict[str, Any]:
    return {"version": CONTROLNET_VERSION}


@controlnet_router.get("/model_list", summary="The ControlNets (and IP-Adapters) the server offers")
def controlnet_model_list(request: Request) -> dict[str, Any]:
    catalogue = request.app.state.catalogue
    # model_list is the extension's (ControlNets and IP-Adapters alike); the browser UI tells them apart
    return {"model_list": [*catalogue.controlnets, *catalogue.ip_adapters],
            "canvaslab": {"controlnets": list(catalogue.controlnets), "ip_adapters": list(catalogue.ip_adapters)}}


@controlnet_router.get("/module_list", summary="Preprocessors (the extension's names; learned ones are not here)")
def controlnet_module_list(alias_names: bool = False) -> dict[str, Any]:
    from canvaslab.engines.diffusion.preprocessors import PREPROCESSORS

    modules = [alias for p in PREPROCESSORS.values() for alias in (p.a1111 or (p.name,))] + ["ip-adapter_clip_sd15"]
    detail = {
        p.name: {"model_free": p.name == "none", "sliders": [
            {"name": s.meaning, "value": s.default, "min": s.low, "max": s.high} for s in (p.a, p.b) if s is not None]}
        for p in PREPROCESSORS.values()
    }
    return {"module_list": modules, "module_detail": detail}


DETECT_IMAGES = {"controlnet_input_images", "controlnet_images", "controlnet_masks"}
DETECT_FIELDS = {"controlnet_module", "controlnet_processor_res", "controlnet_threshold_a", "controlnet_threshold_b",
                 *DETECT_IMAGES}


def detect_maps(body: dict[str, Any], max_pixels: int) -> list[str]:
    from canvaslab.core.image import encode_image, load_mask
    from canvaslab.engines.diffusion import preprocessors
    from canvaslab.errors import InputError, ModelNotAvailableError
    from canvaslab.server.jobs import http_status_of

    module = str(body.get("controlnet_module") or "none")
    images = body.get("controlnet_input_images") or body.get("controlnet_images") or []
    masks = body.get("controlnet_masks") or []
    # detection runs outside the job queue, so a request holds few images (each within the pixel limit)
    if not isinstance(images, list) or not images or len(images) > MAX_UNITS:
        raise ClientError(f"controlnet_input_images must be a list of 1..{MAX_UNITS} base64 images",
                          field="controlnet_input_images")
    if not isinstance(masks, list) or len(masks) > len(images):
        raise ClientError("controlnet_masks must be a list of base64 masks, at most one per image",
                          field="controlnet_masks")
    made = []
    try:
        name = preprocessors.preprocessor(module).name
        a = body.get("controlnet_threshold_a")
        b = body.get("controlnet_threshold_b")
        pre = preprocessors.PREPROCESSORS[name]
        a = number(body, "controlnet_threshold_a", 0.0, float) if pre.a is not None and a not in (None, -1) else None
        b = number(body, "controlnet_threshold_b", 0.0, float) if pre.b is not None and b not in (None, -1) else None
        for field, settings in (("controlnet_threshold_a", (a, None)), ("controlnet_threshold_b", (a, b))):
            try:
                preprocessors.check_settings(name, *settings)  # out of range: the field at fault, not the module
            except InputError as exc:
                raise ClientError(str(exc), status=422, field=field) from None
        for index, value in enumerate(images):
            loaded = open_upload(decode_base64_image(value, "controlnet_input_images"), "controlnet_input_images", max_pixels)
            mask = None
            if index < len(masks) and masks[index]:
                mask_data = decode_base64_image(masks[index], "controlnet_masks")
                mask = load_mask(open_upload(mask_data, "controlnet_masks", max_pixels).rgb, size=loaded.size)
            out = preprocessors.run(name, loaded.rgb, mask=mask, threshold_a=a, threshold_b=b)
            made.append(base64.b64encode(encode_image(out, format="png")).decode())
    except InputError as exc:
        raise ClientError(hide_paths(str(exc)), status=422, field="controlnet_module") from None
    except ModelNotAvailableError as exc:  # a learned preprocessor whose model the server does not have
        raise ClientError(hide_paths(str(exc)), status=http_status_of(exc), field="controlnet_module") from None
    return made


@controlnet_router.post("/detect", summary="Run a preprocessor: the maps a ControlNet would get")
async def controlnet_detect(request: Request) -> dict[str, Any]:
    # base64 images are bounded by the upload limits when decoded, not by the text bound
    body = await read_body(request, DETECT_FIELDS - DETECT_IMAGES)
    # maps are made at the image's own size (pixel perfect): the extension's processor_res is not read
    ignored = ignored_fields(body, DETECT_FIELDS - {"controlnet_processor_res"})
    # outside the job queue, like the mask routes: one at a time with them, a bounded wait (503 beyond it)
    maps = await run_at_once(request, functools.partial(detect_maps, body, request.app.state.settings.max_pixels),
                             "masks or control maps")
    return {"images": maps, "info": "Success", "canvaslab": {"ignored_fields": ignored}}


@controlnet_router.post("/txt2img", summary="The extension's old route: txt2img with controlnet_units")
async def controlnet_txt2img(request: Request) -> Response:
    return await txt2img(request)


@controlnet_router.post("/img2img", summary="The extension's old route: img2img with controlnet_units")
async def controlnet_img2img(request: Request) -> Response:
    return await img2img(request)
