"""Masks over HTTP: the native /api/v1/mask (points, boxes, words, rules; what the browser's Select tool
calls) and the /sam/* routes of the sd-webui-segment-anything extension that `webuiapi` calls
(`SegmentAnythingInterface`: heartbeat, sam-model, sam-predict, dino-predict).

A mask answers at once (no job queue): after the first click on a picture, SAM reuses its embedding,
which the server keeps for EMBEDDING_TTL seconds after its last use (masks.sam.EmbeddingCache), so the
next clicks cost only the prompt decoder. Mask work runs one request at a time in a worker thread (with
/controlnet/detect's maps, the other work answered outside the job queue); a request that waits longer than
the server's request timeout, or finds MAX_WAITING others waiting, gets 503. Errors name configured models by
the names clients know, never by their folders.

Every field is bounded before any work: the image by the server's pixel limit, points, boxes and phrases
by count, phrases by length; clients name mask models only by the names the server offers (--mask-model,
plus the aliases when --allow-downloads), never by path.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image, ImageDraw
from pydantic import ValidationError

from canvaslab.core.image import LoadedImage
from canvaslab.errors import CanvaslabError
from canvaslab.server.inputs import (
    ClientError, check_field_sizes, client_error, decode_base64_image, display_name, open_upload, parse_json,
)
from canvaslab.tasks.requests import MaskRequest, describe_validation_error

router = APIRouter()
log = logging.getLogger("canvaslab.server")

MAX_POINTS = 64  # positive and negative together
MAX_BOXES = 16
MAX_PHRASES = 8
MAX_PHRASE = 200  # characters
EMBEDDING_TTL = 600.0  # seconds an image's SAM embedding is kept after its last use
EMBEDDINGS_KEPT = 4  # images
MAX_WAITING = 4  # requests waiting for the one running; more get 503 at once (each waiting one holds a thread)
# The extension's own model names, which webuiapi sends by default: they mean "the server's default".
EXTENSION_SAM = ("sam_vit_h_4b8939.pth", "sam_vit_l_0b3195.pth", "sam_vit_b_01ec64.pth", "sam_hq_vit_h.pth",
                 "sam_hq_vit_l.pth", "sam_hq_vit_b.pth", "mobile_sam.pt")
EXTENSION_DINO = ("GroundingDINO_SwinT_OGC (694MB)", "GroundingDINO_SwinB (938MB)")
_MAKING = threading.Lock()  # held while an app's mask state is made
NATIVE_FIELDS = frozenset(MaskRequest.model_fields) | {"image"}
SAM_PREDICT_FIELDS = frozenset({
    "input_image", "sam_model_name", "sam_positive_points", "sam_negative_points", "dino_enabled", "dino_model_name",
    "dino_text_prompt", "dino_box_threshold", "dino_preview_checkbox", "dino_preview_boxes_selection",
})
DINO_PREDICT_FIELDS = frozenset({"input_image", "text_prompt", "dino_model_name", "box_threshold"})


# -- models clients may name -------------------------------------------------------------------


class MaskModels:
    """The mask models the server offers, by the name clients use, and the default of each kind."""

    def __init__(self, values: list[str], offer_aliases: bool) -> None:
        from canvaslab.masks.models import ALIASES

        self.configured = {display_name(value): value for value in values}
        self.aliases = list(ALIASES) if offer_aliases else []
        self._kinds: dict[str, str] = {}
        self.unreadable: set[str] = set()  # names of configured models that could not be read (why: the log)
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return [*self.configured, *(a for a in self.aliases if a not in self.configured)]

    def kind(self, value: str) -> str:
        from canvaslab.masks.models import resolve

        with self._lock:
            if value not in self._kinds:
                try:
                    self._kinds[value] = resolve(value).kind
                except CanvaslabError as exc:  # a configured model's error names its folder: clients see its name
                    raise client_error(exc) from None
            return self._kinds[value]

    def pick(self, name: str | None, want: str, field: str) -> str:
        """The server-side model for a client's `name` (None: the default of kind `want`, "sam" or "text")."""
        if name is None:
            for value in self.configured.values():
                if self._is(value, want):
                    return value
            default = {"sam": "sam", "text": "clipseg", "dino": "grounding-dino"}[want]
            if default in self.aliases:
                return default
            what = {"sam": "Segment Anything model", "text": "text model (CLIPSeg or a detector)",
                    "dino": "object detector (Grounding DINO, OWL-ViT, OWLv2)"}[want]
            broken = ", ".join(sorted(self.unreadable))
            why = f" (it could not read {broken}: see its log)" if broken else ""
            raise ClientError(f"the server offers no {what}{why}: start it with --mask-model", status=400, field=field)
        if name in self.configured:
            return self.configured[name]
        if name in self.aliases:
            return name
        offered = ", ".join(self.names()) or "none (start the server with --mask-model)"
        raise ClientError(f"unknown mask model {name[:100]!r}: the server offers {offered}", field=field)

    def of_kind(self, want: str) -> list[str]:
        return [name for name, value in self.configured.items() if self._is(value, want)]

    def _is(self, value: str, want: str) -> bool:
        try:
            kind = self.kind(value)
        except Exception as exc:  # noqa: BLE001 - a configured model that cannot be read is no default; said when asked
            if Path(value).name not in self.unreadable:
                log.warning("mask model %s cannot be used: %s", value, " ".join(str(exc).split()))
            self.unreadable.add(Path(value).name)  # the name only: clients never see the server's paths
            return False
        return kind == want or (want == "text" and kind in ("clipseg", "detector")) or (want == "dino" and kind == "detector")


def _state(request: Request) -> tuple[Any, MaskModels, Any, threading.Semaphore]:
    """The app's settings and, made on first use, its mask models, embedding cache and one-at-a-time lock."""
    from canvaslab.masks.sam import EmbeddingCache

    state = request.app.state
    if getattr(state, "mask_waiting", None) is None:  # the last one made: all are there once it is
        # The sync routes run in threads: first requests at once must not each make their own lock.
        with _MAKING:
            if getattr(state, "mask_waiting", None) is None:
                settings = state.settings
                state.mask_models = MaskModels(list(getattr(settings, "mask_models", [])), settings.allow_downloads)
                state.mask_embeddings = EmbeddingCache(size=EMBEDDINGS_KEPT, ttl=EMBEDDING_TTL)
                state.mask_lock = threading.Semaphore(1)
                state.mask_waiting = threading.BoundedSemaphore(MAX_WAITING + 1)  # the running request and those waiting
    return state.settings, state.mask_models, state.mask_embeddings, state.mask_lock


# -- bodies ------------------------------------------------------------------------------------


async def _json_object(request: Request, allowed: frozenset[str], image_field: str) -> dict[str, Any]:
    """The body: JSON, an object, only `allowed` fields, every field but the base64 `image_field` within the
    size bounds (the image is bounded when it is decoded)."""
    content_type = request.headers.get("content-type", "")
    if content_type and not content_type.startswith("application/json"):
        raise ClientError(f"send application/json, not {content_type.split(';')[0]}", status=415)
    raw = await request.body()
    if not raw.strip():
        raise ClientError("the request body is empty: send a JSON object")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise ClientError(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ClientError(f"unknown field {unknown[0][:100]!r}: this endpoint takes {', '.join(sorted(allowed))}",
                          status=422, field=unknown[0][:100])
    check_field_sizes(body, unread={image_field})
    return body


def _count(value: Any, limit: int, field: str, what: str) -> Any:
    if value is not None and not isinstance(value, list):
        raise ClientError(f"{field} must be a list of {what}", status=422, field=field)
    if value and len(value) > limit:
        raise ClientError(f"{field} has {len(value):,} {what}; the server takes at most {limit}", status=422, field=field)
    return value


def _phrases(value: Any, field: str) -> list[str]:
    phrases = [value] if isinstance(value, str) else value or []
    if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
        raise ClientError(f"{field} must be a string or a list of strings", status=422, field=field)
    phrases = [p for part in phrases for p in part.split("|")] if phrases else []
    if len(phrases) > MAX_PHRASES:
        raise ClientError(f"{field} has {len(phrases)} phrases; the server takes at most {MAX_PHRASES}", status=422, field=field)
    for phrase in phrases:
        if len(phrase) > MAX_PHRASE:
            raise ClientError(f"{field}: a phrase is {len(phrase):,} characters long; the server takes at most {MAX_PHRASE}",
                              status=422, field=field)
    return phrases


def _image(value: Any, field: str, max_pixels: int) -> LoadedImage:
    if value is None:
        raise ClientError(f"{field} is missing: send the image, base64 or a data URL", field=field)
    return open_upload(decode_base64_image(value, field), field, max_pixels)


def _request(fields: dict[str, Any]) -> MaskRequest:
    try:
        return MaskRequest.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ClientError(describe_validation_error(exc), status=422,
                          field=".".join(str(p) for p in err["loc"]) or None) from None


async def run_at_once(request: Request, job: Any, what: str = "masks") -> Any:
    """`job()` in a worker thread, one at a time with the other work answered outside the job queue (masks,
    ControlNet maps); 503 when the wait exceeds the request timeout, or at once when MAX_WAITING wait already.
    A request whose client goes away while it waits leaves its place, and its work is not done."""
    settings, _, _, lock = _state(request)
    admitted = request.app.state.mask_waiting
    busy = ClientError(f"the server is busy making other {what}: try again in a moment", status=503)
    gone = ClientError("the client went away", status=499)
    if not admitted.acquire(blocking=False):
        raise busy
    left = threading.Event()

    async def watch() -> None:
        while not left.is_set():
            await asyncio.sleep(0.2)
            if await request.is_disconnected():
                left.set()

    def locked() -> Any:
        deadline = time.monotonic() + settings.request_timeout
        while not lock.acquire(timeout=0.1):
            if left.is_set():
                raise gone
            if time.monotonic() >= deadline:
                raise busy
        try:
            if left.is_set():
                raise gone
            return job()
        except CanvaslabError as exc:  # bad input (400), a model that cannot be loaded (404, ...): no server paths
            raise client_error(exc) from None
        finally:
            lock.release()

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(locked)
    finally:
        watcher.cancel()
        admitted.release()


def _png(array: np.ndarray, mode: str | None = None) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# -- native ------------------------------------------------------------------------------------


def _body_schema() -> dict[str, Any]:
    """MaskRequest's JSON schema plus the image, with its enums written in place (for /openapi.json)."""
    schema = MaskRequest.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    schema = inline(schema)
    schema["properties"] = {"image": {"type": "string", "description": "the image, base64 or a data URL"},
                            **schema["properties"]}
    schema["required"] = ["image"]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post("/api/v1/mask", tags=["masks"], summary="Make a mask: points/boxes (SAM), text, or a rule",
             openapi_extra=_body_schema())
async def make(request: Request) -> dict[str, Any]:
    """Body: `image` (base64 or data URL) and the fields of `canvaslab mask` (points, negative_points, boxes,
    multimask, model, text, text_model, threshold, auto, options, refine fields). Answers the mask as a
    base64 PNG (white = fill), its size, coverage, the model's scores, a detector's boxes, and whether
    SAM reused the image's embedding."""
    settings, models, cache, _ = _state(request)
    body = await _json_object(request, NATIVE_FIELDS, "image")
    _count(body.get("points"), MAX_POINTS, "points", "points")
    _count(body.get("negative_points"), MAX_POINTS, "negative_points", "points")
    if len(body.get("points") or []) + len(body.get("negative_points") or []) > MAX_POINTS:
        raise ClientError(f"at most {MAX_POINTS} points in all", status=422, field="points")
    _count(body.get("boxes"), MAX_BOXES, "boxes", "boxes")
    if "text" in body:
        body["text"] = _phrases(body["text"], "text")
    if body.get("auto") == "watermark":
        raise ClientError("auto watermark compares a folder of images: run `canvaslab mask --images DIR --auto "
                          "watermark` instead", status=422, field="auto")
    # decoding, the work and the answer's PNGs run in worker threads: the event loop keeps serving everyone else
    image = await run_in_threadpool(_image, body.pop("image", None), "image", settings.max_pixels)
    mask_request = _request(body)
    _inside(mask_request.points, image.size, "points")
    _inside(mask_request.negative_points, image.size, "negative_points")
    changes: dict[str, Any] = {}
    if mask_request.auto is None:
        if mask_request.text:
            changes["text_model"] = models.pick(mask_request.text_model, "text", "text_model")
        if not mask_request.text or mask_request.model is not None or models.kind(changes["text_model"]) == "detector":
            changes["model"] = models.pick(mask_request.model, "sam", "model")
    mask_request = mask_request.model_copy(update=changes)

    def work() -> dict[str, Any]:
        from canvaslab.tasks.mask import make_mask

        made = make_mask(image, mask_request, cache=cache, max_pixels=settings.max_pixels)
        return {
            "mask": _png(made.grey(), "L"), "size": list(made.size), "coverage": round(made.coverage, 6),
            "scores": [round(s, 4) for s in made.scores], "boxes": made.boxes, "embedding_cached": made.cached,
            "notices": made.notices, "seconds": round(made.seconds, 3),
        }

    return await run_at_once(request, work)


@router.get("/api/v1/mask/models", tags=["masks"], summary="Mask models the server offers, by kind")
def mask_models(request: Request) -> dict[str, Any]:
    _, models, _, _ = _state(request)
    return {"sam": models.of_kind("sam"), "text": models.of_kind("text"), "aliases": models.aliases}


# -- the sd-webui-segment-anything extension's routes ------------------------------------------


@router.get("/sam/heartbeat", tags=["a1111"], summary="segment-anything extension: alive")
def heartbeat() -> dict[str, str]:
    return {"msg": "Success!"}


@router.get("/sam/sam-model", tags=["a1111"], summary="segment-anything extension: SAM model names")
def sam_model_names(request: Request) -> list[str]:
    _, models, _, _ = _state(request)
    return models.of_kind("sam")


def _extension_model(models: MaskModels, name: Any, defaults: tuple[str, ...], want: str, field: str) -> str:
    if name is not None and not isinstance(name, str):
        raise ClientError(f"{field} must be a string", status=422, field=field)
    return models.pick(None if name in (None, "", *defaults) else name, want, field)


def _points(value: Any, field: str) -> list[tuple[float, float]]:
    _count(value, MAX_POINTS, field, "points")
    points = []
    for item in value or []:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)):
            raise ClientError(f"{field} must be [x, y] pairs of numbers", status=422, field=field)
        points.append((float(item[0]), float(item[1])))
    return points


def _inside(points: list[tuple[float, float]], size: tuple[int, int], field: str) -> None:
    """Every point on the picture (the number shown short: a click at 1e300 is no sentence of 300 digits)."""
    width, height = size
    for index, (x, y) in enumerate(points):
        if not (0 <= x <= width and 0 <= y <= height):
            raise ClientError(f"point {x:.6g},{y:.6g} is outside the {width}x{height} image", field=field)


def _threshold(value: Any, field: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ClientError(f"{field} must be a number from 0 to 1", status=422, field=field)
    return float(value)


def _overlay(rgb: np.ndarray, mask: np.ndarray) -> tuple[str, str]:
    """The extension's two pictures of a mask: blended (the mask tinted over the image) and masked (the
    image's pixels inside the mask, transparent outside)."""
    level = mask[..., None].astype(np.float32) * 0.5
    tinted = rgb.astype(np.float32) * (1 - level) + np.array([255, 0, 0], np.float32) * level
    blended = np.round(tinted).astype(np.uint8)
    masked = np.dstack([rgb, mask.astype(np.uint8) * 255])
    return _png(blended, "RGB"), _png(masked, "RGBA")


@router.post("/sam/sam-predict", tags=["a1111"], summary="segment-anything extension: masks from points or GroundingDINO boxes")
async def sam_predict(request: Request) -> dict[str, Any]:
    settings, models, cache, _ = _state(request)
    body = await _json_object(request, SAM_PREDICT_FIELDS, "input_image")
    image = await run_in_threadpool(_image, body.get("input_image"), "input_image", settings.max_pixels)
    positive = _points(body.get("sam_positive_points"), "sam_positive_points")
    negative = _points(body.get("sam_negative_points"), "sam_negative_points")
    if len(positive) + len(negative) > MAX_POINTS:
        raise ClientError(f"at most {MAX_POINTS} points in all", status=422, field="sam_positive_points")
    _inside(positive, image.size, "sam_positive_points")
    _inside(negative, image.size, "sam_negative_points")
    sam = _extension_model(models, body.get("sam_model_name"), EXTENSION_SAM, "sam", "sam_model_name")
    fields: dict[str, Any] = {"points": positive, "negative_points": negative, "multimask": True, "model": sam}
    selection = body.get("dino_preview_boxes_selection")
    if body.get("dino_enabled"):
        phrases = _phrases(body.get("dino_text_prompt") or "", "dino_text_prompt")
        phrases = [p.strip() for phrase in phrases for p in phrase.split(".") if p.strip()]
        if not phrases:
            raise ClientError("dino_enabled needs dino_text_prompt: what to find, phrases separated by '.'",
                              status=422, field="dino_text_prompt")
        if len(phrases) > MAX_PHRASES:
            raise ClientError(f"dino_text_prompt has {len(phrases)} phrases; the server takes at most {MAX_PHRASES}",
                              status=422, field="dino_text_prompt")
        detector = _extension_model(models, body.get("dino_model_name"), EXTENSION_DINO, "dino", "dino_model_name")
        threshold = _threshold(body.get("dino_box_threshold"), "dino_box_threshold", 0.3)
        if selection is not None and not (isinstance(selection, list) and len(selection) <= MAX_BOXES
                                          and all(isinstance(i, int) and not isinstance(i, bool) for i in selection)):
            raise ClientError(f"dino_preview_boxes_selection must be a list of at most {MAX_BOXES} box indices",
                              status=422, field="dino_preview_boxes_selection")
        if positive or negative:
            raise ClientError("send points or dino_enabled with a text prompt, not both", status=422, field="dino_enabled")
    elif not positive:
        raise ClientError("sam_positive_points is empty: click the object (or enable GroundingDINO with a text prompt)",
                          status=422, field="sam_positive_points")

    def work() -> dict[str, Any]:
        from canvaslab.masks.detect import detector as load_detector
        from canvaslab.masks.models import resolve, resolve_device
        from canvaslab.tasks.mask import make_mask

        if not body.get("dino_enabled"):
            made, how = make_mask(image, _request(fields), cache=cache, max_pixels=settings.max_pixels), "points"
        else:
            found = load_detector(resolve(detector, want="text"), resolve_device("auto")).boxes(image.rgb, phrases, threshold)
            if selection is not None and body.get("dino_preview_checkbox"):
                found = [box for index, box in enumerate(found) if index in set(selection)]
            if not found:
                return {"msg": "GroundingDINO found no box above the threshold", "blended_images": [], "masks": [],
                        "masked_images": []}
            boxes = {"boxes": [box.xyxy for box in found], "multimask": True, "model": sam}
            made, how = make_mask(image, _request(boxes), cache=cache, max_pixels=settings.max_pixels), f"{len(found)} box(es)"
        pictures = [_overlay(image.rgb, mask) for mask in made.candidates]  # seconds for a big picture: not on the loop
        return {
            "msg": f"Done: {len(made.candidates)} masks from {how}, best first (scores "
                   f"{', '.join(f'{s:.3f}' for s in made.scores)})",
            "blended_images": [blended for blended, _ in pictures],
            "masks": [_png(mask.astype(np.uint8) * 255, "L") for mask in made.candidates],
            "masked_images": [masked for _, masked in pictures],
        }

    return await run_at_once(request, work)


@router.post("/sam/dino-predict", tags=["a1111"], summary="segment-anything extension: GroundingDINO boxes drawn on the image")
async def dino_predict(request: Request) -> dict[str, Any]:
    settings, models, _, _ = _state(request)
    body = await _json_object(request, DINO_PREDICT_FIELDS, "input_image")
    image = await run_in_threadpool(_image, body.get("input_image"), "input_image", settings.max_pixels)
    phrases = [p.strip() for phrase in _phrases(body.get("text_prompt") or "", "text_prompt")
               for p in phrase.split(".") if p.strip()]
    if not phrases or len(phrases) > MAX_PHRASES:
        raise ClientError(f"text_prompt needs 1 to {MAX_PHRASES} phrases separated by '.'", status=422, field="text_prompt")
    detector = _extension_model(models, body.get("dino_model_name"), EXTENSION_DINO, "dino", "dino_model_name")
    threshold = _threshold(body.get("box_threshold"), "box_threshold", 0.3)

    def work() -> dict[str, Any]:
        from canvaslab.masks.detect import detector as load_detector
        from canvaslab.masks.models import resolve, resolve_device

        found = load_detector(resolve(detector, want="text"), resolve_device("auto")).boxes(image.rgb, phrases, threshold)
        picture = Image.fromarray(image.rgb)
        draw = ImageDraw.Draw(picture)
        for index, box in enumerate(found):
            draw.rectangle(box.xyxy, outline=(255, 0, 0), width=2)
            draw.text((box.xyxy[0] + 3, box.xyxy[1] + 2), f"{index}: {box.phrase} {box.score:.2f}", fill=(255, 0, 0))
        return {"msg": f"{len(found)} box(es)", "image_with_box": _png(np.asarray(picture), "RGB")}

    return await run_at_once(request, work)
