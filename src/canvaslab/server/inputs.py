"""From a client's body and image bytes to a validated request and the work a job runs.

One place for what both APIs accept, all of it checked before a job is queued:
- JSON as RFC 8259 has it (no NaN/Infinity, no numbers that overflow, no lone surrogates), nested
  and sized within bounds, so no body can reach a parser's or our own recursion limit;
- images as base64 (data URLs too) or bytes, checked against the pixel limit, masks of the image's size;
- request fields validated by the task's request model (the one the CLI and Python API use), engine
  options by the engine, every working size by `server.budget`;
- no filesystem paths from clients, and only the models the server was started with.

Waiting jobs hold the uploaded bytes, not decoded pixels: a 2 KB PNG can decode to 12 MB, and 64
of them would wait in the queue.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from canvaslab.core.image import LoadedImage, load_image
from canvaslab.errors import CanvaslabError, InputError
from canvaslab.server.jobs import Work, each_result, http_status_of
from canvaslab.server.settings import ServerSettings
from canvaslab.tasks.requests import (
    PATH_OPTIONS,
    REQUESTS,
    UnderstandRequest,
    describe_validation_error,
    engine_for_model,
    parse_lora,
)

TASKS = (*REQUESTS, "understand")
CREATIVE_ENGINES = ("diffusion", "unified")
# Request fields that name files or folders on the server: never taken from clients.
PATH_FIELDS = ("cache_dir", "frames")  # (and PATH_OPTIONS, the engine options that name files)

# What one body may hold. Prompts are read by a 77-token text encoder (A1111 chunks a few of those),
# so 10,000 characters is far beyond any real prompt; every value stays in the job history.
MAX_TEXT = 10_000
MAX_ITEMS = 64  # list items (LoRAs, questions, step prompts, sides)
MAX_KEYS = 128  # keys of one object (an A1111 body has about 50)
MAX_KEY_LENGTH = 100
MAX_DEPTH = 8  # of a field's value
JSON_MAX_DEPTH = 2 * MAX_DEPTH  # of a whole document (A1111 script arguments the server ignores nest deeper)
MAX_DIGITS = 40  # a whole number longer than this is no seed, size or count


class ClientError(Exception):
    """A request the server refuses: HTTP `status`, one sentence, and the field at fault (if one)."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.field = message, status, field


@dataclass
class Prepared:
    """A validated submission, ready to queue: the request and the uploads as bytes."""

    task: str
    request: BaseModel
    image: bytes | None
    mask: bytes | None
    dropped: list[str] = field(default_factory=list)  # fields left out because the engine does not read them
    uploads: dict[str, bytes] = field(default_factory=dict)  # control / reference images, by the name the request uses


# -- bodies ------------------------------------------------------------------------------------


def parse_json(raw: bytes | str, what: str = "the request body") -> Any:
    """A JSON document, strictly: malformed, non-finite, overflowing or too deep is a 400 naming `what`."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise ClientError(f"{what} is nested too deeply (at most {JSON_MAX_DEPTH} levels)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and our hooks' refusals
        raise ClientError(f"{what} is not valid JSON: {_one_line(exc)}") from None
    check_text(value, what)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a whole number has {len(text.lstrip('-')):,} digits (at most {MAX_DIGITS})")
    return int(text)


def check_text(value: Any, what: str, depth: int = 0) -> None:
    """Refuse nesting beyond JSON_MAX_DEPTH and strings that are not Unicode (lone surrogates cannot be written out)."""
    if depth > JSON_MAX_DEPTH:
        raise ClientError(f"{what} is nested too deeply (at most {JSON_MAX_DEPTH} levels)")
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ClientError(f"{what} is not valid JSON: a string holds a lone UTF-16 surrogate") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, what, depth + 1)
            check_text(item, what, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_text(item, what, depth + 1)


def check_field_sizes(fields: dict[str, Any], *, unread: frozenset[str] | set[str] = frozenset()) -> None:
    """Refuse long texts, long lists, many keys and deep nesting, naming the top-level field.

    Fields in `unread` (A1111 fields the server ignores) are only held to the key and depth bounds.
    """
    _check_keys(fields, None)
    for name, value in fields.items():
        _check_size(value, name, 1, name not in unread)


def _check_keys(mapping: dict[str, Any], field: str | None) -> None:
    if len(mapping) > MAX_KEYS:
        raise ClientError(f"{field or 'the request'} has {len(mapping):,} keys; the server takes at most {MAX_KEYS}",
                          field=field)
    for key in mapping:
        if len(key) > MAX_KEY_LENGTH:
            raise ClientError(f"a key of {field or 'the request'} is {len(key):,} characters long; the server takes at "
                              f"most {MAX_KEY_LENGTH}", field=field)


def _check_size(value: Any, field: str, depth: int, read: bool) -> None:
    if depth > MAX_DEPTH:
        raise ClientError(f"{field} is nested {depth} levels deep; the server takes at most {MAX_DEPTH}", field=field)
    if isinstance(value, str):
        if read and len(value) > MAX_TEXT:
            raise ClientError(f"{field} is {len(value):,} characters long; the server takes at most {MAX_TEXT:,}",
                              field=field)
    elif isinstance(value, list):
        if read and len(value) > MAX_ITEMS:
            raise ClientError(f"{field} has {len(value):,} items; the server takes at most {MAX_ITEMS}", field=field)
        for item in value:
            _check_size(item, field, depth + 1, read)
    elif isinstance(value, dict):
        _check_keys(value, field)
        for item in value.values():
            _check_size(item, field, depth + 1, read)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


# An absolute path in a message (not a URL's, not inside a word): a library's error about a configured model
# names its folder, the Hugging Face cache, or a job's upload folder.
_SERVER_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"`,;:()\[\]{}<>/]+/)+([^\s'\"`,;:()\[\]{}<>/]*)")


def hide_paths(text: str) -> str:
    """`text` with every absolute path replaced by its last part: a configured model's folder becomes the name
    clients know it by (`display_name`), and no server folder reaches a client."""
    return _SERVER_PATH.sub(lambda match: match.group(1) or "a folder of the server", text)


def without_paths(exc: CanvaslabError) -> CanvaslabError:
    """The same error (its type: its HTTP status) with its sentence's server paths hidden."""
    try:
        return type(exc)(hide_paths(str(exc)))
    except TypeError:  # a subclass with another constructor
        return CanvaslabError(hide_paths(str(exc)))


def client_error(exc: CanvaslabError, field: str | None = None) -> ClientError:
    """A library's refusal as the client sees it: its status, its sentence without server paths."""
    return ClientError(hide_paths(str(exc)), status=http_status_of(exc), field=field)


# -- models ------------------------------------------------------------------------------------


def display_name(model: str) -> str:
    """How a configured model is shown to clients: the file/folder name for paths, else the name itself."""
    return Path(model).name if Path(model).exists() else model


class Catalogue:
    """The model and LoRA names clients may use, and which server-side value each stands for.

    Only the models the server was started with, unless `allow_downloads` also offers the built-in
    aliases: a client must not be able to make the server fetch gigabytes (or wait on the hub).
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.configured = {display_name(m): m for m in settings.models}
        self.loras = {display_name(path): path for path in settings.loras}
        self.controlnets = {display_name(path): path for path in settings.control_models}
        self.ip_adapters = {Path(path).stem: path for path in settings.ip_adapters}
        self.current: str | None = settings.models[0] if settings.models else None
        self.offers_aliases = settings.allow_downloads

    def aliases(self) -> list[str]:
        if not self.offers_aliases:
            return []
        from canvaslab.engines.diffusion.models import ALIASES
        from canvaslab.engines.unified.bundle import ALIASES as UNIFIED_ALIASES

        return [*ALIASES, *UNIFIED_ALIASES]

    def names(self) -> list[str]:
        return [*self.configured, *(a for a in self.aliases() if a not in self.configured)]

    def offers(self, value: str) -> bool:
        """Whether `value` (a server-side model value) is one clients may use."""
        return value in self.configured.values() or value in self.aliases()

    def resolve_model(self, name: str) -> str:
        """The server-side model a client's name stands for; paths and unknown names are refused."""
        if name in self.configured:
            return self.configured[name]
        if self.offers(name):
            return name
        raise ClientError(f"unknown model {_shown(name)}: {self.offered()} (see /api/v1/models)", field="model")

    def offered(self) -> str:
        names = self.names()
        if names:
            return f"the server offers {', '.join(names)}"
        return "the server offers no models (start it with --model)"

    def resolve_lora(self, spec: str) -> str:
        name, weight = parse_lora(spec)
        if name not in self.loras:
            offered = ", ".join(self.loras) or "none"
            raise ClientError(f"unknown LoRA {name!r}: the server offers {offered}", field="lora")
        return f"{self.loras[name]}:{weight}"

    def resolve_control(self, name: str, field: str = "control") -> str:
        """The server-side ControlNet a client's name stands for (an A1111 " [hash]" suffix is not part of it)."""
        name = without_hash(name)
        if name in self.controlnets:
            return self.controlnets[name]
        offered = ", ".join(self.controlnets) or "none (start the server with --control-model)"
        raise ClientError(f"unknown ControlNet {_shown(name)}: the server offers {offered}", field=field)

    def resolve_ip_adapter(self, name: str, field: str = "ip_adapter") -> str:
        name = without_hash(name)
        name = Path(name).stem if len(name) <= MAX_NAME else name
        if name in self.ip_adapters:
            return self.ip_adapters[name]
        offered = ", ".join(self.ip_adapters) or "none (start the server with --ip-adapter)"
        raise ClientError(f"unknown IP-Adapter {_shown(name)}: the server offers {offered}", field=field)


MAX_NAME = 1000  # a model name longer than this names nothing the server offers
_HASH = re.compile(r"[0-9a-fA-F]+")


def without_hash(name: str) -> str:
    """`name` without A1111's " [0123abcd]" suffix, in linear time (a regex ending in `\\s*\\[...\\]$` is
    quadratic in a run of spaces, and A1111 units are not held to the text bound)."""
    if len(name) > MAX_NAME or not name.endswith("]"):
        return name
    head, bracket, digits = name[:-1].rpartition("[")
    return head.rstrip() if bracket and _HASH.fullmatch(digits) else name


def _shown(name: str) -> str:
    """A client's name as a refusal shows it: at most 60 characters."""
    return repr(name) if len(name) <= 60 else repr(name[:57] + "...")


# -- images ------------------------------------------------------------------------------------


def decode_base64_image(value: Any, field: str) -> bytes:
    """Bytes of a base64 string or data URL (`data:image/png;base64,...`)."""
    if not isinstance(value, str):
        raise ClientError(f"{field} must be a base64-encoded image (a string), got {type(value).__name__}", field=field)
    if not value.strip():
        raise ClientError(f"{field} is empty: send a base64-encoded image", field=field)
    text = value.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(f"{field} is not valid base64", field=field) from None


UPLOAD_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF")  # Pillow's names (MPO: a camera's JPEG)


def image_header(data: bytes, field: str, max_pixels: int) -> tuple[int, int]:
    """The size an uploaded image's header claims, without decoding its pixels: one of UPLOAD_FORMATS (not,
    say, EPS, which Pillow would hand to Ghostscript when the job decodes it) within the pixel limit."""
    import io

    from PIL import Image, UnidentifiedImageError

    from canvaslab.core.image import pixel_limit

    if not data:
        raise ClientError(f"{field} is empty", field=field)
    try:
        with pixel_limit(max_pixels), Image.open(io.BytesIO(data)) as image:
            kind, size = image.format, image.size
    except InputError as exc:  # over the pixel limit, by the header
        raise ClientError(f"{field}: {exc}", field=field) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ClientError(f"{field} is not an image Pillow reads", field=field) from None
    if kind not in UPLOAD_FORMATS:
        raise ClientError(f"{field} is {kind}: send {', '.join(f for f in UPLOAD_FORMATS if f != 'MPO')} images",
                          field=field)
    return size


def open_upload(data: bytes, field: str, max_pixels: int) -> LoadedImage:
    """Decode an uploaded image, refusing non-images and anything over the pixel limit with 400."""
    image_header(data, field, max_pixels)  # a format we take (never EPS for Ghostscript), by its header
    try:
        return load_image(data, max_pixels=max_pixels)
    except InputError as exc:
        raise ClientError(f"{field}: {exc}", field=field) from None


# -- requests ----------------------------------------------------------------------------------


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


MAX_CONDITIONING = 8  # control units, and IP-Adapters, per request
MAX_REFERENCES = 16  # reference images per IP-Adapter (IPAdapterSpec's bound)
# The pixels of all reference images of a request, in images at the pixel limit: the job holds them decoded
# (an image encoder sees 224x224 of each). 8 A1111 units at the limit fit; 8 x 16 native ones at 512x512 too.
REFERENCE_BUDGET = 16


def conditioning_uploads(fields: dict[str, Any], catalogue: Catalogue, max_pixels: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Control units and IP-Adapters as clients send them: models by the server's names, images as base64 (never
    paths). The images become uploads named in the request (`control-0.png`, ...), written out when the job runs."""
    fields, uploads = dict(fields), {}
    # counted before any image is decoded (the field-size checks run on what is left afterwards)
    for name, most in (("control", MAX_CONDITIONING), ("ip_adapter", MAX_CONDITIONING)):
        if isinstance(fields.get(name), list) and len(fields[name]) > most:
            raise ClientError(f"{name} has {len(fields[name])} entries; the server takes at most {most}", field=name)
    if isinstance(fields.get("control"), list):
        units = []
        for index, unit in enumerate(fields["control"]):
            where = f"control.{index}"
            if not isinstance(unit, dict):
                raise ClientError(f"{where} must be an object with model, image, preprocessor, weight, ...", field=where)
            unit = dict(unit)
            if isinstance(unit.get("model"), str):
                unit["model"] = catalogue.resolve_control(unit["model"], f"{where}.model")
            if unit.get("image") not in (None, ""):
                data = decode_base64_image(unit["image"], f"{where}.image")
                image_header(data, f"{where}.image", max_pixels)  # decoded when the job runs
                unit["image"] = f"control-{index}.png"
                uploads[unit["image"]] = data
            else:
                unit.pop("image", None)
            units.append(unit)
        fields["control"] = units
    if isinstance(fields.get("ip_adapter"), list):
        adapters, pixels = [], 0
        for index, item in enumerate(fields["ip_adapter"]):
            where = f"ip_adapter.{index}"
            if not isinstance(item, dict):
                raise ClientError(f"{where} must be an object with model, images, weight", field=where)
            item = dict(item)
            if isinstance(item.get("model"), str):
                item["model"] = catalogue.resolve_ip_adapter(item["model"], f"{where}.model")
            if "encoder" in item:
                raise ClientError("the IP-Adapter's image encoder is the server's: leave out encoder", field=f"{where}.encoder")
            images = item.pop("images", item.pop("image", []))
            if isinstance(images, list) and len(images) > MAX_REFERENCES:
                raise ClientError(f"{where}.images has {len(images)} images; the server takes at most {MAX_REFERENCES}",
                                  field=f"{where}.images")
            names = []
            for number, value in enumerate(images if isinstance(images, list) else [images]):
                data = decode_base64_image(value, f"{where}.images")
                width, height = image_header(data, f"{where}.images", max_pixels)  # decoded when the job runs
                pixels += width * height
                if pixels > REFERENCE_BUDGET * max_pixels:
                    raise ClientError(f"the reference images hold over {pixels:,} pixels; the server takes at most "
                                      f"{REFERENCE_BUDGET} images' worth at its pixel limit ({REFERENCE_BUDGET * max_pixels:,}"
                                      " pixels): send smaller images (the image encoder sees 224x224)", field="ip_adapter")
                names.append(f"ip-adapter-{index}-{number}.png")
                uploads[names[-1]] = data
            item["images"] = names
            adapters.append(item)
        fields["ip_adapter"] = adapters
    return fields, uploads


def with_uploads(request: Any, folder: Path) -> Any:
    """`request` with its control and reference images at their files in `folder`."""
    control = [u.model_copy(update={"image": str(folder / u.image)}) if u.image else u
               for u in getattr(request, "control", None) or []]
    adapters = [a.model_copy(update={"images": [str(folder / name) for name in a.images]})
                for a in getattr(request, "ip_adapter", None) or []]
    return request.model_copy(update={"control": control, "ip_adapter": adapters})


def with_defaults(task: str, fields: dict[str, Any], settings: ServerSettings, catalogue: Catalogue) -> dict[str, Any]:
    """The server's engine (for inpaint/outpaint, or generate/understand when it can paint), its current
    model, and no downloads unless the server allows them."""
    fields = dict(fields)
    engine = settings.engine
    named = fields.get("model") if isinstance(fields.get("model"), str) else None
    # A named model implies its engine (tasks.requests); otherwise the server's engine is the default.
    if fields.get("engine") is None and named is None and engine is not None:
        if task in ("inpaint", "outpaint") or (task == "generate" and engine in CREATIVE_ENGINES):
            fields["engine"] = engine
    kind = UnderstandRequest if task == "understand" else REQUESTS[task]
    chosen = fields.get("engine") or (engine_for_model(named) if named else kind.model_fields["engine"].default)
    # The server's model belongs to its engine (any painting engine when its own is classical); edit
    # keeps its own editing model unless asked.
    serves = chosen == engine if engine in CREATIVE_ENGINES else chosen in CREATIVE_ENGINES
    if "model" not in fields and catalogue.current and serves and task != "edit":
        fields["model"] = catalogue.current
    if chosen == "diffusion" and not settings.allow_downloads:
        fields["local_files_only"] = True  # a model missing on disk fails at once instead of holding the worker
    return fields


def check_model(request: Any, catalogue: Catalogue) -> None:
    """A painting engine's model (named, the server's, or the task's default) must be one the server offers."""
    if request.engine not in CREATIVE_ENGINES:
        return
    if request.model is None:
        if not catalogue.offers_aliases:
            raise ClientError(f"engine {request.engine!r} needs a model: {catalogue.offered()} (see /api/v1/models)",
                              field="model")
    elif not catalogue.offers(request.model):
        raise ClientError(f"model {request.model!r} (this task's default) is not offered: {catalogue.offered()}",
                          field="model")


def check_engine_options(task: str, request: Any) -> None:
    """The engine's own options model, now rather than when the job runs (422 naming options.KEY)."""
    if task == "understand":
        return  # its request model validates its options itself
    from canvaslab.engines import get_engine

    engine = get_engine(request.engine)
    try:
        engine.parse_options(request.options)
    except InputError as exc:
        raise ClientError(str(exc), status=422, field=_option_field(engine.Options, request.options)) from None


def _option_field(options: type[BaseModel], values: dict[str, Any]) -> str:
    try:
        options.model_validate(dict(values))
    except ValidationError as exc:
        key = ".".join(str(p) for p in exc.errors()[0]["loc"])
        return f"options.{key}" if key else "options"
    return "options"


def prepare(
    task: str, fields: Any, image: bytes | None, mask: bytes | None, settings: ServerSettings, catalogue: Catalogue,
    *, unread: frozenset[str] | set[str] = frozenset(), drop_unused: bool = False,
) -> Prepared:
    """Everything checked before a job is queued, so bad input is a 4xx now, not a failed job later.

    `unread`: fields the caller ignores (A1111 extras), held only to the nesting and key bounds.
    `drop_unused`: leave out the fields the engine does not read instead of refusing them (A1111
    clients send a CFG scale and steps whatever the engine); `Prepared.dropped` names them.
    """
    from canvaslab.server.budget import check_work

    # 1. the task and its fields
    if task not in TASKS:
        raise ClientError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}", status=404)
    if not isinstance(fields, dict):
        raise ClientError(f"the request body must be a JSON object, got {type(fields).__name__}")
    fields, uploads = conditioning_uploads(fields, catalogue, settings.max_pixels)  # base64 images out of the fields
    check_field_sizes(fields, unread=unread)
    fields = with_defaults(task, refuse_paths(fields, catalogue), settings, catalogue)
    dropped: list[str] = []
    if drop_unused and task != "understand":
        fields, dropped = REQUESTS[task].drop_unused(fields)
    request = validate_request(task, fields)
    # 2. what the job would otherwise only find wrong once it runs: the model and the engine's options
    check_model(request, catalogue)
    check_engine_options(task, request)
    # 3. the images
    loaded = None
    if task == "generate":
        if image is not None:
            raise ClientError("generate takes no input image (edit changes an existing one)", field="image")
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
    # 4. every size the work will have
    try:
        check_work(task, request, loaded, mask, settings)
    except ClientError:
        raise
    except CanvaslabError as exc:  # a plan the task itself would refuse (an outpaint of nothing, a missing model)
        raise client_error(exc) from None
    return Prepared(task, request, image, mask, dropped, uploads)


def check_mask(mask: bytes, image: LoadedImage, max_pixels: int) -> None:
    loaded = open_upload(mask, "mask", max_pixels)
    if loaded.size != image.size:
        raise ClientError(
            f"the mask is {loaded.size[0]}x{loaded.size[1]} but the image is {image.size[0]}x{image.size[1]}: "
            "send a mask of the image's size", field="mask",
        )


def task_work(prepared: Prepared, max_pixels: int, count: int = 1) -> Work:
    """The job's work: `count` results of the task (seeds seed, seed+1, ...), one at a time, each skippable."""

    def work():  # type: ignore[no-untyped-def]
        from canvaslab.core.progress import Cancelled
        from canvaslab.tasks.common import open_image, resolve_seed, step_seed
        from canvaslab.tasks.render import run_task
        from canvaslab.tasks.understand import understand

        # Decoded here, in the worker: the queue holds only the uploaded bytes.
        image = None if prepared.image is None else open_image(prepared.image, max_pixels)
        if prepared.task == "understand":
            try:
                answers = understand(image, request=prepared.request, max_pixels=max_pixels)  # type: ignore[arg-type]
            except Cancelled:
                raise
            except CanvaslabError as exc:
                raise without_paths(exc) from None
            yield answers
            return
        base = resolve_seed(prepared.request.seed)  # type: ignore[attr-defined]
        with tempfile.TemporaryDirectory(prefix="canvaslab-uploads-") as folder:
            for name, data in prepared.uploads.items():  # control and reference images: files for the task
                (Path(folder) / name).write_bytes(data)
            ready = with_uploads(prepared.request, Path(folder)) if prepared.uploads else prepared.request

            def make(index: int):  # type: ignore[no-untyped-def]
                request = ready.model_copy(update={"seed": step_seed(base, index)})
                try:
                    return run_task(prepared.task, image, prepared.mask, request, max_pixels)  # type: ignore[arg-type]
                except Cancelled:
                    raise
                except CanvaslabError as exc:  # a configured model's folder, the uploads' folder: not the client's
                    raise without_paths(exc) from None

            yield from each_result(count, make)

    return work
