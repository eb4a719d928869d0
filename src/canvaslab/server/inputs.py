"""From a client's fields and image bytes to a validated request and the work a job runs.

One place for what both APIs accept: images as base64 (data URLs too) or bytes, checked against the
pixel limit and for matching mask size; request fields validated by the task's request model (the
same one the CLI and Python API use); and no filesystem paths from clients, only model and LoRA
names the server knows.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from canvaslab.core.image import LoadedImage, load_image
from canvaslab.errors import InputError
from canvaslab.server.jobs import Work
from canvaslab.server.settings import ServerSettings
from canvaslab.tasks.requests import REQUESTS, UnderstandRequest, describe_validation_error, parse_lora

TASKS = (*REQUESTS, "understand")
CREATIVE_ENGINES = ("diffusion", "unified")
# Request fields that name files or folders on the server: never taken from clients.
PATH_FIELDS = ("cache_dir", "frames")
PATH_OPTIONS = ("config", "magvit", "tokenizer")


class ClientError(Exception):
    """A request the server refuses: HTTP `status`, one sentence, and the field at fault (if one)."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.field = message, status, field


@dataclass
class Prepared:
    """A validated submission, ready to queue."""

    task: str
    request: BaseModel
    image: LoadedImage | None
    mask: bytes | None


def display_name(model: str) -> str:
    """How a configured model is shown to clients: the file/folder name for paths, else the name itself."""
    return Path(model).name if Path(model).exists() else model


class Catalogue:
    """The model and LoRA names clients may use, and which server-side value each stands for."""

    def __init__(self, settings: ServerSettings) -> None:
        self.configured = {display_name(m): m for m in settings.models}
        self.loras = {display_name(path): path for path in settings.loras}
        self.current: str | None = settings.models[0] if settings.models else None

    def aliases(self) -> list[str]:
        from canvaslab.engines.diffusion.models import ALIASES
        from canvaslab.engines.unified.bundle import ALIASES as UNIFIED_ALIASES

        return [*ALIASES, *UNIFIED_ALIASES]

    def names(self) -> list[str]:
        return [*self.configured, *(a for a in self.aliases() if a not in self.configured)]

    def resolve_model(self, name: str) -> str:
        """The server-side model a client's name stands for; paths and unknown names are refused."""
        if name in self.configured:
            return self.configured[name]
        if name in self.configured.values():
            return name
        if name in self.aliases():
            return name
        raise ClientError(
            f"unknown model {name!r}: the server offers {', '.join(self.names())} (see /api/v1/models)", field="model"
        )

    def resolve_lora(self, spec: str) -> str:
        name, weight = parse_lora(spec)
        if name not in self.loras:
            offered = ", ".join(self.loras) or "none"
            raise ClientError(f"unknown LoRA {name!r}: the server offers {offered}", field="lora")
        return f"{self.loras[name]}:{weight}"


def decode_base64_image(value: Any, field: str) -> bytes:
    """Bytes of a base64 string or data URL (`data:image/png;base64,...`)."""
    if not isinstance(value, str) or not value.strip():
        raise ClientError(f"{field} must be a base64-encoded image (a string), got {type(value).__name__}", field=field)
    text = value.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(f"{field} is not valid base64", field=field) from None


def open_upload(data: bytes, field: str, max_pixels: int) -> LoadedImage:
    """Decode an uploaded image, refusing non-images and anything over the pixel limit with 400."""
    if not data:
        raise ClientError(f"{field} is empty", field=field)
    try:
        return load_image(data, max_pixels=max_pixels)
    except InputError as exc:
        raise ClientError(f"{field}: {exc}", field=field) from None


def validate_request(task: str, fields: dict[str, Any]) -> BaseModel:
    """The task's request model built from `fields`; 422 naming the field on bad input."""
    kind = UnderstandRequest if task == "understand" else REQUESTS[task]
    try:
        return kind.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise ClientError(describe_validation_error(exc), status=422, field=field) from None


def refuse_paths(fields: dict[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    """Fields with any client-given filesystem path refused, model and LoRA names mapped to the server's."""
    fields = dict(fields)
    for name in PATH_FIELDS:
        if fields.get(name) not in (None, ""):
            raise ClientError(f"{name} names a file or folder on the server, which clients cannot set", field=name)
    options = fields.get("options")
    if isinstance(options, dict):
        for key in PATH_OPTIONS:
            if key in options:
                raise ClientError(f"option {key} names a file or folder on the server, which clients cannot set",
                                  field=f"options.{key}")
    if isinstance(fields.get("model"), str):
        fields["model"] = catalogue.resolve_model(fields["model"])
    lora = fields.get("lora")
    if isinstance(lora, str):
        lora = [lora]
    if isinstance(lora, list):
        fields["lora"] = [catalogue.resolve_lora(str(spec)) for spec in lora]
    return fields


def with_defaults(task: str, fields: dict[str, Any], settings: ServerSettings, catalogue: Catalogue) -> dict[str, Any]:
    """The server's engine (for inpaint/outpaint, or generate/understand when it can paint) and current model."""
    fields = dict(fields)
    engine = settings.engine
    if "engine" not in fields and engine is not None:
        if task in ("inpaint", "outpaint") or (task == "generate" and engine in CREATIVE_ENGINES):
            fields["engine"] = engine
    kind = UnderstandRequest if task == "understand" else REQUESTS[task]
    chosen = fields.get("engine", kind.model_fields["engine"].default)
    # The server's model belongs to its engine; edit keeps its own editing model unless asked.
    if "model" not in fields and catalogue.current and engine in CREATIVE_ENGINES and chosen == engine and task != "edit":
        fields["model"] = catalogue.current
    return fields


def prepare(
    task: str, fields: Any, image: bytes | None, mask: bytes | None, settings: ServerSettings, catalogue: Catalogue
) -> Prepared:
    """Everything checked before a job is queued, so bad input is a 4xx now, not a failed job later."""
    if task not in TASKS:
        raise ClientError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}", status=404)
    if not isinstance(fields, dict):
        raise ClientError(f"the request body must be a JSON object, got {type(fields).__name__}")
    fields = with_defaults(task, refuse_paths(fields, catalogue), settings, catalogue)
    request = validate_request(task, fields)
    loaded = None
    if task == "generate":
        if image is not None:
            raise ClientError("generate takes no input image (edit changes an existing one)", field="image")
        check_generate_size(request, settings.max_pixels)
    else:
        if image is None:
            raise ClientError(f"{task} needs an input image: send it as base64 in 'image' or as a file part", field="image")
        loaded = open_upload(image, "image", settings.max_pixels)
    if mask is not None:
        if task != "inpaint":
            raise ClientError(f"{task} takes no mask", field="mask")
        check_mask(mask, loaded, settings.max_pixels)  # type: ignore[arg-type]
    elif task == "inpaint" and request.mask_mode.value != "alpha":  # type: ignore[attr-defined]
        raise ClientError("inpaint needs a mask (white = fill): send it in 'mask', or set mask_mode to alpha", field="mask")
    if task == "outpaint":
        check_outpaint_size(request, loaded, settings.max_pixels)  # type: ignore[arg-type]
    return Prepared(task, request, loaded, mask)


def check_mask(mask: bytes, image: LoadedImage, max_pixels: int) -> None:
    loaded = open_upload(mask, "mask", max_pixels)
    if loaded.size != image.size:
        raise ClientError(
            f"the mask is {loaded.size[0]}x{loaded.size[1]} but the image is {image.size[0]}x{image.size[1]}: "
            "send a mask of the image's size", field="mask",
        )


def check_generate_size(request: Any, max_pixels: int) -> None:
    side = request.size
    width, height = (side, side) if side else (request.width or 0, request.height or 0)
    if width * height > max_pixels:
        raise ClientError(f"{width}x{height} is over the server's {max_pixels}-pixel limit", field="size" if side else "width")


def check_outpaint_size(request: Any, image: LoadedImage, max_pixels: int) -> None:
    width = image.size[0] + request.left + request.right
    height = image.size[1] + request.top + request.bottom
    if width * height > max_pixels:
        raise ClientError(f"the outpainted canvas would be {width}x{height}, over the server's {max_pixels}-pixel limit")


def task_work(prepared: Prepared, max_pixels: int, count: int = 1) -> Work:
    """The job's work: `count` results of the task (seeds seed, seed+1, ...), one at a time."""

    def work():  # type: ignore[no-untyped-def]
        from canvaslab.tasks.common import resolve_seed, step_seed
        from canvaslab.tasks.render import run_task
        from canvaslab.tasks.understand import understand

        if prepared.task == "understand":
            yield understand(prepared.image, request=prepared.request, max_pixels=max_pixels)  # type: ignore[arg-type]
            return
        base = resolve_seed(prepared.request.seed)  # type: ignore[attr-defined]
        for index in range(count):
            request = prepared.request.model_copy(update={"seed": step_seed(base, index)})
            yield run_task(prepared.task, prepared.image, prepared.mask, request, max_pixels)  # type: ignore[arg-type]

    return work
