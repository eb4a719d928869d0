"""POST /api/v1/video/inpaint: remove an object from a clip as a job (progress in frames, cancel, result file).

Multipart only (a clip is binary and large): a file part `clip` (a video file) or, for a folder of frames,
one file part `frame` per frame in order (PNG, JPEG, WebP, BMP or TIFF; `fps` in the request, 25 by
default); a file part `mask` (one image for every frame, or a mask video); and a text part `request`
(the `VideoInpaintRequest` fields as JSON, plus the output's `format` (mp4, webm, mkv, gif) and `crf`).
The job is followed like any other (/api/v1/jobs/{id}, its events: `progress` counts finished frames);
its result's one file is the video.

Everything a clip can make the server do is bounded before it is queued: the upload by --max-upload-mb,
each frame by --max-pixels, the frames x pixels of the processed range by FRAME_BUDGET x --max-pixels,
the frames held at once (window + 2 x context) by WINDOW_BUDGET x --max-pixels, the clip's length
(its longest stream, audio included) by MAX_SECONDS, and every size the key frames' engine works at as
for an image inpaint (`budget.check_work`). A clip's header can lie about its frame count: decoding
stops at the end of the range the header gave (and at MAX_FRAMES). A running job stops at its next
frame once --max-job-seconds is spent; a queued one holds its uploads on disk, not in memory.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from canvaslab.core.image import LoadedImage
from canvaslab.errors import CanvaslabError, InputError
from canvaslab.server.inputs import (
    Catalogue, ClientError, check_engine_options, check_field_sizes, check_model, client_error, conditioning_uploads,
    hide_paths, parse_json, refuse_paths, with_defaults, with_uploads,
)
from canvaslab.server.jobs import QueueFull, Work
from canvaslab.server.native import _submitted
from canvaslab.server.settings import ServerSettings
from canvaslab.tasks.requests import describe_validation_error

router = APIRouter(prefix="/api/v1/video")

TASK = "video-inpaint"
PARTS = ("request", "clip", "mask", "frame")
MAX_FRAME_PARTS = 2000  # frames sent one image a part (a longer clip travels as a video file)
FRAME_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}  # Pillow format -> file
FORMATS = ("mp4", "webm", "mkv", "gif")
FRAME_BUDGET = 128  # frames x pixels of one job, in frames at the pixel limit (2048x2048: 128 frames; 480p: ~1300)
WINDOW_BUDGET = 48  # frames held in memory at once (window + 2 x context), in frames at the pixel limit
MAX_FRAMES = 10_000  # whatever their size
MIN_FPS = 0.001  # frames sent as parts: the slowest rate the video writer holds (Fraction(fps).limit_denominator(1001))
MAX_SECONDS = 600.0  # of media by the clip's header (its longest stream: the audio is copied, maybe re-encoded, whole)


@dataclass
class PreparedVideo:
    request: Any  # VideoInpaintRequest
    clip: bytes | None
    frames: list[tuple[str, bytes]]  # (suffix, image file) per frame, when no clip
    mask: bytes
    mask_is_video: bool
    format: str
    crf: int
    uploads: dict[str, bytes] = field(default_factory=dict)  # control / reference images, by the name the request uses


async def _read_parts(request: Request, max_part: int) -> tuple[Any, bytes | None, bytes | None, list[bytes]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ClientError("send multipart/form-data: a file part 'clip' (or 'frame' parts), a file part 'mask' and a "
                          "text part 'request' (JSON)", status=415)
    try:
        form = await request.form(max_part_size=max_part, max_files=MAX_FRAME_PARTS + 2, max_fields=len(PARTS))
    except Exception as exc:  # noqa: BLE001 - the multipart parser's errors are all "malformed form"
        raise ClientError(f"the multipart form could not be read: {exc}") from None
    unknown = sorted(set(form.keys()) - set(PARTS))
    if unknown:
        raise ClientError(f"unknown form part {unknown[0]!r}: send 'request' (JSON), 'clip' or 'frame' parts, and "
                          "'mask'", field=unknown[0])
    for name in ("request", "clip", "mask"):
        if len(form.getlist(name)) > 1:
            raise ClientError(f"the form holds {len(form.getlist(name))} parts '{name}': send one", field=name)
    fields: Any = {}
    text = form.get("request")
    if text is not None:
        if not isinstance(text, str):
            text = await text.read()
        try:
            fields = parse_json(text, "the 'request' part") if text.strip() else {}
        except ClientError as exc:
            raise ClientError(exc.message, field="request") from None
    files: dict[str, bytes | None] = {}
    for name in ("clip", "mask"):
        part = form.get(name)
        files[name] = None if part is None else await _bytes(part)
    frames = [await _bytes(part) for part in form.getlist("frame")]
    return fields, files["clip"], files["mask"], frames


async def _bytes(part: Any) -> bytes:
    return part.encode() if isinstance(part, str) else await part.read()


@router.post(
    "/inpaint", status_code=202, tags=["tasks"], summary="Queue a video inpaint job",
    description="Multipart: a file part 'clip' (video) or one file part 'frame' per frame (images, in order), a file "
    "part 'mask' (image or mask video), a text part 'request' (the fields of `canvaslab video inpaint --help` as "
    "JSON, plus 'format': mp4|webm|mkv|gif and 'crf'). Answers 202 with the job id; the job's progress counts "
    "frames, its result holds the video.",
    responses={202: {"description": "queued"}, 400: {"description": "bad input or over a limit"},
               413: {"description": "too large"}, 415: {"description": "not multipart"},
               422: {"description": "invalid field"}, 429: {"description": "queue full"}},
)
async def submit_video(request: Request) -> JSONResponse:
    state = request.app.state
    fields, clip, mask, frames = await _read_parts(request, state.settings.max_upload_bytes)
    prepared = await run_in_threadpool(prepare_video, fields, clip, mask, state.settings, state.catalogue, frames)
    work = await run_in_threadpool(video_work, prepared, state.settings)
    del prepared, clip, mask, frames  # the uploads are on disk now
    try:
        job = state.queue.submit(TASK, work)
    except QueueFull as exc:
        work.discard()  # its uploads go now, not when the collector meets the work (the refusal's traceback holds it)
        raise ClientError(str(exc), status=429) from None
    return _submitted(request, job)


def prepare_video(fields: Any, clip: bytes | None, mask: bytes | None, settings: ServerSettings,
                  catalogue: Catalogue, frames: list[bytes] | None = None) -> PreparedVideo:
    """Everything checked before queueing (4xx now rather than a failed job later)."""
    from canvaslab.video.requests import VideoInpaintRequest

    # 1. the fields: sizes, no paths, the server's defaults, the request model, the output options
    if not isinstance(fields, dict):
        raise ClientError(f"the 'request' part must be a JSON object, got {type(fields).__name__}", field="request")
    # ControlNet / IP-Adapter units as for an image: models by the server's names, images as base64, never paths
    fields, uploads = conditioning_uploads(fields, catalogue, settings.max_pixels)
    check_field_sizes(fields)
    fields = dict(fields)
    fmt, crf = fields.pop("format", "mp4"), fields.pop("crf", 18)
    if fmt not in FORMATS:
        raise ClientError(f"format must be one of {', '.join(FORMATS)}, got {_short(fmt)}", status=422, field="format")
    if not isinstance(crf, int) or isinstance(crf, bool) or not 0 <= crf <= 51:
        raise ClientError(f"crf must be a whole number from 0 to 51, got {_short(crf)}", status=422, field="crf")
    if fields.get("fps") is not None and not frames:
        raise ClientError("fps is for frames sent as 'frame' parts; an uploaded clip keeps its own frame rate", field="fps")
    fps = fields.get("fps")
    if isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps < MIN_FPS:
        # the writer keeps the rate as a fraction of denominator <= 1001: below this it is 0 (the job would crash)
        raise ClientError(f"fps must be at least {MIN_FPS:g}, got {fps:g}", status=422, field="fps")
    fields = with_defaults("inpaint", refuse_paths(fields, catalogue), settings, catalogue)
    try:
        video_request = VideoInpaintRequest.model_validate(fields)
    except ValidationError as exc:
        field = ".".join(str(p) for p in exc.errors()[0]["loc"]) or None
        raise ClientError(describe_validation_error(exc), status=422, field=field) from None
    check_model(video_request, catalogue)
    check_engine_options("inpaint", video_request)
    # 2. the uploads, probed without decoding a frame: sizes, lengths, the frames x pixels budget
    if clip and frames:
        raise ClientError("send the clip as one video file ('clip') or as images ('frame' parts), not both", field="frame")
    if not clip and not frames:
        raise ClientError("video inpaint needs a clip: send the video file as the part 'clip', or its frames as "
                          "'frame' parts", field="clip")
    if not mask:
        raise ClientError("video inpaint needs a mask: send one image, or a mask video, as the part 'mask'", field="mask")
    images = _frame_images(frames or [], settings)
    try:
        with tempfile.TemporaryDirectory(prefix="canvaslab-video-") as scratch:
            count, size, mask_is_video = _probe(Path(scratch), clip, images, mask, video_request, settings)
    except ClientError:
        raise
    except CanvaslabError as exc:
        raise client_error(exc) from None
    width, height = size
    if count * width * height > FRAME_BUDGET * settings.max_pixels or count > MAX_FRAMES:
        raise ClientError(f"{count:,} frames of {width}x{height} are over what one job may process here ({FRAME_BUDGET} "
                          f"frames at the pixel limit of {settings.max_pixels:,}, at most {MAX_FRAMES:,} frames): send a "
                          "shorter clip or range (start, end)", field="end" if video_request.end else "clip")
    held = min(count, video_request.window + 2 * video_request.context)
    if held * width * height > WINDOW_BUDGET * settings.max_pixels:
        raise ClientError(f"window + 2 x context = {held} frames of {width}x{height} held at once is over the server's "
                          f"limit of {WINDOW_BUDGET} frames at the pixel limit: use a smaller window or context",
                          field="window")
    # 3. what the engine works at on a key frame, as for an image (the whole frame a hole but one pixel: the most)
    try:
        _check_frame_work(video_request, size, settings)
    except ClientError:
        raise
    except CanvaslabError as exc:  # a configured model that cannot be read names its folder: not the client's
        raise client_error(exc) from None
    return PreparedVideo(video_request, clip or None, images, mask, mask_is_video, fmt, crf, uploads)


def _short(value: Any) -> str:
    """A client's value as an error shows it: at most 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _frame_images(frames: list[bytes], settings: ServerSettings) -> list[tuple[str, bytes]]:
    """Each 'frame' part checked by its header (an image of a format we read, within the pixel limit, the
    first one's size), with the suffix it is stored under."""
    from PIL import Image, UnidentifiedImageError

    images, first = [], None
    for index, data in enumerate(frames):
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind, size = image.format, image.size
        except Image.DecompressionBombError:
            raise ClientError(f"frame part {index} claims far more pixels in its header than the limit of "
                              f"{settings.max_pixels:,}", field="frame") from None
        except (UnidentifiedImageError, OSError):
            raise ClientError(f"frame part {index} is not an image Pillow reads", field="frame") from None
        if kind not in FRAME_SUFFIXES:
            raise ClientError(f"frame part {index} is {kind}: send {', '.join(FRAME_SUFFIXES)} images", field="frame")
        if size[0] * size[1] > settings.max_pixels:
            raise ClientError(f"frame part {index} is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, over the "
                              f"limit of {settings.max_pixels:,}", field="frame")
        first = first or size
        if size != first:
            raise ClientError(f"frame part {index} is {size[0]}x{size[1]}, not {first[0]}x{first[1]} like the first: "
                              "every frame must have one size", field="frame")
        images.append((FRAME_SUFFIXES[kind], data))
    return images


def _write_frames(folder: Path, images: list[tuple[str, bytes]]) -> Path:
    folder.mkdir()
    for index, (suffix, data) in enumerate(images):
        (folder / f"{index:06d}{suffix}").write_bytes(data)
    return folder


def _probe(scratch: Path, clip: bytes | None, images: list[tuple[str, bytes]], mask: bytes, request: Any,
           settings: ServerSettings) -> tuple[int, tuple[int, int], bool]:
    """(frames to process, frame size, whether the mask is a video), from the containers' headers."""
    from canvaslab.video.io import Clip, FrameFolder, VideoFile

    source: Clip
    if clip is None:
        folder = _write_frames(scratch / "frames", images)
        try:
            source = FrameFolder(folder, fps=request.fps, max_pixels=settings.max_pixels)
        except InputError as exc:
            raise ClientError(f"frames: {str(exc).replace(str(folder), 'the frames')}", field="frame") from None
        return _probe_mask(scratch, source, mask, request, settings)
    clip_path = scratch / "clip"
    clip_path.write_bytes(clip)
    try:
        source = VideoFile(clip_path, max_pixels=settings.max_pixels, max_frames=MAX_FRAMES)
    except InputError as exc:
        raise ClientError(f"clip: {str(exc).replace(str(clip_path), 'the clip')}", field="clip") from None
    if source.seconds is not None and source.seconds > MAX_SECONDS:
        raise ClientError(f"the clip runs {source.seconds:,.1f} s by its header, over the server's limit of {MAX_SECONDS:g} s: "
                          "send a shorter clip", field="clip")
    return _probe_mask(scratch, source, mask, request, settings)


def _probe_mask(scratch: Path, source: Any, mask: bytes, request: Any, settings: ServerSettings) -> tuple[int, tuple[int, int], bool]:
    from canvaslab.video.inpainting import frame_range
    from canvaslab.video.io import Masks

    start, end = frame_range(source, request)
    mask_path = scratch / "mask"
    mask_path.write_bytes(mask)
    mask_is_video = _is_video(mask_path, settings.max_pixels)
    if mask_is_video:
        mask_path = mask_path.rename(scratch / "mask.mp4")  # any suffix of VIDEO_SUFFIXES: PyAV reads the content
    try:
        Masks(mask_path, source, mode=request.mask_mode.value, threshold=request.threshold,
              max_pixels=settings.max_pixels, max_frames=MAX_FRAMES)
    except InputError as exc:
        raise ClientError(f"mask: {str(exc).replace(str(mask_path), 'the mask')}", field="mask") from None
    return end - start, source.size, mask_is_video


def _is_video(path: Path, max_pixels: int) -> bool:
    """An image Pillow reads (one frame) is a mask image; anything else is taken for a mask video. An image
    whose header claims more than the pixel limit is refused here, before its frames are counted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ClientError(f"mask: the mask is {width}x{height} = {width * height:,} pixels, over the limit of "
                                  f"{max_pixels:,}", field="mask")
            return getattr(image, "n_frames", 1) > 1
    except Image.DecompressionBombError:
        raise ClientError(f"mask: the mask claims far more pixels in its header than the limit of {max_pixels:,}",
                          field="mask") from None
    except (UnidentifiedImageError, OSError):
        return True


def _check_frame_work(request: Any, size: tuple[int, int], settings: ServerSettings) -> None:
    from canvaslab.server.budget import check_work

    width, height = size
    frame = LoadedImage(np.zeros((height, width, 3), np.uint8), None, "<frame>", None)
    hole = np.ones((height, width), bool)
    hole[0, 0] = False
    check_work("inpaint", request.frame_request(), frame, hole, settings)  # type: ignore[arg-type]


SCRATCH_PREFIX = ".video-"  # + the server's pid + a job's uuid: a job's uploads and frames while it runs


def remove_stale_scratch(output: Path) -> list[Path]:
    """Remove the scratch folders that servers killed mid-job left in `output` (their pid no longer runs),
    keeping those of a live server sharing the folder. Called when a server starts; returns what went."""
    removed = []
    for folder in output.glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name[len(SCRATCH_PREFIX):].partition("-")[0]
        if not folder.is_dir() or folder.is_symlink() or not pid.isdigit() or _running(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or no answer): not ours to judge
    return True


def video_work(prepared: PreparedVideo, settings: ServerSettings) -> Work:
    """The job. The uploads go to a scratch folder under the output now, so a queued job holds a folder on
    disk rather than its clip in memory; the video is made there and handed to the queue, which copies
    it into the job's folder. The folder goes when the job ends, when a job that never ran (cancelled while
    queued) is dropped, and at once through `work.discard()` when the full queue refuses the job."""
    scratch = settings.output / f"{SCRATCH_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    scratch.mkdir(parents=True)
    try:
        if prepared.clip is not None:
            clip, clip_name = scratch / "clip", "the clip"
            clip.write_bytes(prepared.clip)
        else:
            clip, clip_name = _write_frames(scratch / "frames", prepared.frames), "the frames"
        mask = scratch / ("mask.mp4" if prepared.mask_is_video else "mask")
        mask.write_bytes(prepared.mask)
        if prepared.uploads:
            (scratch / "uploads").mkdir()
            for name, data in prepared.uploads.items():  # control and reference images: files for the task
                (scratch / "uploads" / name).write_bytes(data)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    request, output, crf = prepared.request, scratch / f"video.{prepared.format}", prepared.crf
    if prepared.uploads:
        request = with_uploads(request, scratch / "uploads")

    def hide(text: str) -> str:
        """The client sees its parts by name, never the server's folders (errors and notices)."""
        text = text.replace(str(clip), clip_name).replace(str(mask), "the mask")
        return hide_paths(text.replace(str(scratch), "the job's folder"))

    def work():  # type: ignore[no-untyped-def]
        from canvaslab.video.inpainting import inpaint

        try:
            try:
                result = inpaint(clip, mask, output, request=request, crf=crf, metadata=settings.metadata,
                                 max_pixels=settings.max_pixels, max_frames=MAX_FRAMES)
            except CanvaslabError as exc:
                raise type(exc)(hide(str(exc))) from None
            result.notices = [hide(text) for text in result.notices]
            yield result
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # removes the folder once: when the work is dropped unrun (cancelled while queued), or at once by discard()
    work.discard = weakref.finalize(work, shutil.rmtree, scratch, True)  # type: ignore[attr-defined]
    return work
