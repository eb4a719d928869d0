"""The video inpaint task: remove what the masks cover from every frame of a clip.

1. Inputs: the request, the clip (a video file, a folder of frames, or arrays), the frame range, the
   masks (one image, a folder by frame name, a mask video; tracked from key frames with `track`), the
   output (a video file, or a folder of PNG frames) and its work folder.
2. The frames, a window at a time (`method` propagate: `propagate.fill_window`) or one at a time
   (per-frame), each finished frame written at once as a PNG into the work folder (or the output
   folder). A frame already there is finished work: a rerun after a kill goes on from there.
3. A video output is assembled from those frames with the clip's audio, written atomically, and the
   work folder removed; a frames folder keeps the recipe beside the frames.

Memory holds one window and its context (`window` + 2 x `context` frames, with their hole pixels'
flow), whatever the clip's length. Pixels outside the (grown) masks are the input's in every frame:
bit for bit in a frames folder or a lossless .mkv, within the codec's error in mp4/webm/gif.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from canvaslab.core.composite import composite
from canvaslab.core.image import (
    DEFAULT_MAX_PIXELS, atomic_write_bytes, atomic_writer, load_image, remove_stale_temporaries, save_image,
)
from canvaslab.core.mask import grow
from canvaslab.core.notices import collect_notices, notice
from canvaslab.core.progress import quiet_steps, report_progress
from canvaslab.errors import InputError
from canvaslab.tasks.batch import refuse_input_as_output
from canvaslab.tasks.common import make_recipe, polarity_hint, resolve_seed
from canvaslab.tasks.requests import request_from
from canvaslab.tasks.result import MetadataMode, recipe_to_write
from canvaslab.video.flow import FlowEstimator, FlowSettings
from canvaslab.video.io import (
    DEFAULT_CRF, Clip, Encoding, Masks, check_output, encode_video, is_video_path, open_clip, save_mask,
)
from canvaslab.video.propagate import fill_window, hole_flows
from canvaslab.video.requests import VideoInpaintRequest, VideoMethod
from canvaslab.video.tracking import TrackReport, track_masks

RECIPE_FILE = ".canvaslab-video.json"  # beside the frames: what made them (a rerun must match it to resume)
OnFrame = Callable[[int, int], None]  # (frames finished, frames in all)


@dataclass
class VideoResult:
    """What `inpaint` made: the output (a video file or a folder of frames) and how."""

    path: Path
    frames: int
    fps: Fraction
    size: tuple[int, int]
    seed: int
    recipe: dict[str, Any]
    parameters: str
    key_frames: list[int] = field(default_factory=list)  # frames the image engine painted (clip indices)
    resumed: int = 0  # frames found finished from an earlier run
    track: TrackReport | None = None
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def suffix(self) -> str:
        return self.path.suffix if self.path.is_file() else ""

    def save(self, path: str | Path, *, format: str | None = None, metadata: MetadataMode | str = "full") -> Path:
        """Copy a video output to `path` atomically (how the server keeps a job's result). The container
        and the metadata stay the output's: `format` and `metadata` are accepted for `Result.save`'s callers."""
        if not self.path.is_file():
            raise InputError(f"{self.path} is a folder of frames: copy the folder instead")
        target = Path(path)
        if target.resolve() != self.path.resolve():
            with self.path.open("rb") as source, atomic_writer(target) as copy:
                shutil.copyfileobj(source, copy, 1 << 20)
        return target


def inpaint(
    clip: Any,
    mask: Any = None,
    output: str | Path | None = None,
    request: VideoInpaintRequest | None = None,
    *,
    crf: int = DEFAULT_CRF,
    metadata: MetadataMode | str = MetadataMode.full,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int | None = None,
    on_frame: OnFrame | None = None,
    **params: Any,
) -> VideoResult:
    """Remove what `mask` covers from every frame of `clip` and write the result to `output`.

    `clip`: a video file (mp4, mov, webm, mkv, gif, avi), a folder of frames (natural name order) or a
    list of HxWx3 uint8 arrays. `mask`: one image for every frame, a folder of masks named like the
    frames (``000012.png`` or ``12.png`` for frame 12 of a video file, the frame's own name for a
    folder), a mask video, or arrays (one HxW bool, or one per frame); with ``track=True`` only key
    frames need one. `output`: .mp4/.mov/.webm (H.264/VP9 at `crf`), .mkv (lossless), .gif, or a folder
    for PNG frames. Parameters are the fields of `VideoInpaintRequest` (pass `request=` or keywords).
    A rerun of an interrupted call with the same arguments goes on from the frames it had finished.
    """
    request = request_from(VideoInpaintRequest, request, params)
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. inputs
        source = open_clip(clip, fps=request.fps, max_pixels=max_pixels, max_frames=max_frames)
        start, end = frame_range(source, request)
        if output is None:
            raise InputError("video inpaint needs an output: a video file (.mp4, .webm, .mkv, .gif) or a folder for frames")
        output = Path(output)
        refuse_input_as_output(output, clip, mask)
        check_output(output)
        masks = Masks(mask, source, mode=request.mask_mode.value, threshold=request.threshold, max_pixels=max_pixels,
                      max_frames=max_frames)
        if masks.single is not None and isinstance(mask, (str, Path)):
            polarity_hint(masks.single, request.mask_mode.value, "the frame")
        work = WorkFolder(output)
        seed, recipe, text = work.begin(request, source, clip, mask, (start, end))
        try:
            # 1.1 tracked masks, once (a resumed run reads the ones it saved)
            report = None
            if request.track:
                report = work.tracked_masks(source, masks, start, end, request)
                masks = Masks(work.masks, source, mode="white", threshold=128, max_pixels=max_pixels)
            # 2. the frames
            runner = _Runner(source, masks, request, seed, work, start, end, on_frame)
            runner.run()
        except BaseException:
            work.abandon()  # nothing finished: nothing to resume, and nothing to refuse the next run for
            raise
        # 3. the output
        if is_video_path(output):
            encoding = Encoding(
                fps=source.fps, size=source.size, crf=crf, colour=source.colour, audio=source.audio,
                audio_from=source.time(start), audio_to=source.time(end) if end < source.count else None,
                metadata=_container_metadata(recipe, metadata),
            )
            encode_video(output, (work.read(i) for i in range(start, end)), encoding)
        work.finish()
    return VideoResult(
        path=output, frames=end - start, fps=source.fps, size=source.size, seed=seed, recipe=recipe, parameters=text,
        key_frames=runner.key_frames, resumed=runner.resumed, track=report, notices=list(dict.fromkeys(notes)),
        seconds=time.perf_counter() - started,
    )


def frame_range(clip: Clip, request: VideoInpaintRequest) -> tuple[int, int]:
    start = request.start or 0
    end = clip.count if request.end is None else request.end
    if start >= clip.count:
        raise InputError(f"--start {start} is past the clip's last frame ({clip.count - 1})")
    if end > clip.count:
        raise InputError(f"--end {end} is past the clip's end ({clip.count} frames)")
    return start, end


def _container_metadata(recipe: dict[str, Any], metadata: MetadataMode | str) -> dict[str, str] | None:
    kept = recipe_to_write(recipe, metadata)
    return None if kept is None else {"comment": json.dumps(kept, ensure_ascii=False)}


# -- the work folder ---------------------------------------------------------------------------


class WorkFolder:
    """Where finished frames wait: the output folder itself, or a hidden folder beside a video output.

    It holds the recipe of the run that made its frames; a rerun resumes only with the same request, clip
    and range (a run without a seed takes the recorded one), and says so otherwise rather than mix frames.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        if is_video_path(output):
            self.root = output.with_name(f".{output.name}.canvaslab")
            self.frames = self.root / "frames"
        else:
            self.root = self.frames = output
        self.masks = self.root / ".canvaslab-masks"
        self.recipe_path = self.root / RECIPE_FILE
        self.names: Callable[[int], str] = lambda i: f"{i:06d}"
        self.done: set[str] = set()

    def begin(self, request: VideoInpaintRequest, clip: Clip, clip_arg: Any, mask_arg: Any,
              span: tuple[int, int]) -> tuple[int, dict[str, Any], str]:
        self.names = clip.name
        previous = self._previous()
        seed = request.seed
        if seed is None and previous is not None:
            seed = previous["request"].get("seed")
        seed = resolve_seed(seed)
        inputs = {"clip": describe(clip_arg), "mask": describe(mask_arg), "range": list(span),
                  "frames": clip.count, "fps": str(clip.fps)}
        recipe, text = make_recipe("video-inpaint", request, seed, clip.size, inputs)
        identity = _identity(recipe)
        if previous is not None and _identity(previous) != identity:
            raise InputError(f"{self.root} holds frames of another run (other settings, clip or range): run the same "
                             "command to resume it, or delete the folder (or choose another output) to start over")
        if previous is None and self.frames.is_dir() and any(self.frames.glob("*.png")):
            raise InputError(f"{self.frames} already holds PNG files that no video run made: choose an empty or new folder")
        self.created = not self.root.exists()
        try:
            self.frames.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot write {self.output}: {exc.strerror or exc} ({exc.filename})") from None
        removed = len(remove_stale_temporaries(self.frames))
        if removed:
            notice(f"removed {removed} unfinished temporary file{'s' if removed != 1 else ''} left by an interrupted run")
        if previous is None:
            atomic_write_bytes(self.recipe_path, json.dumps(recipe, indent=1).encode())
        self.done = {p.stem for p in self.frames.glob("*.png")}
        if self.done:
            notice(f"resuming: {len(self.done)} finished frame{'s' if len(self.done) != 1 else ''} found in {self.frames}")
        return seed, recipe, text

    def _previous(self) -> dict[str, Any] | None:
        if not self.recipe_path.is_file():
            return None
        try:
            return json.loads(self.recipe_path.read_text())
        except (OSError, ValueError):
            raise InputError(f"{self.recipe_path} is unreadable: delete {self.root} to start over") from None

    def has(self, index: int) -> bool:
        return self.names(index) in self.done

    def read(self, index: int) -> np.ndarray:
        return load_image(self.frames / f"{self.names(index)}.png", max_pixels=2**62).rgb  # our own file

    def write(self, index: int, rgb: np.ndarray) -> None:
        name = self.names(index)
        save_image(self.frames / f"{name}.png", rgb)
        self.done.add(name)

    def tracked_masks(self, clip: Clip, masks: Masks, start: int, end: int, request: VideoInpaintRequest) -> TrackReport | None:
        """Track once into the work folder; a resumed run finds them there (all of them: the masks are
        written in order and the report last)."""
        report_path = self.masks / "track.json"
        if report_path.is_file():
            return None
        settings = FlowSettings(size=request.flow_size, preset=request.flow_preset.value)

        def write(index: int, mask: np.ndarray) -> None:
            save_mask(self.masks / f"{clip.name(index)}.png", mask)

        report = track_masks(clip, masks, start, end, settings, write)
        atomic_write_bytes(report_path, json.dumps([f.as_dict() for f in report.frames]).encode())
        return report

    def abandon(self) -> None:
        """After a failure: when no frame was finished, remove what this run made (the recipe, the work
        folder, an output folder it created), so a corrected command starts afresh instead of being
        refused as another run. Finished frames stay: they are what a rerun resumes from."""
        if self.done:
            return
        shutil.rmtree(self.masks, ignore_errors=True)
        if is_video_path(self.output):
            shutil.rmtree(self.root, ignore_errors=True)
            return
        self.recipe_path.unlink(missing_ok=True)
        if getattr(self, "created", False):
            with contextlib.suppress(OSError):
                self.frames.rmdir()  # only when empty
                if self.root != self.frames:
                    self.root.rmdir()

    def finish(self) -> None:
        """Every frame is written (and a video output encoded): what only served the run goes."""
        shutil.rmtree(self.masks, ignore_errors=True)
        if is_video_path(self.output):
            shutil.rmtree(self.root, ignore_errors=True)


def read_recipe(path: str | Path) -> dict[str, Any] | None:
    """The recipe a video output carries (None: none, or not a video output): a video file's container
    `comment` tag, a frames folder's .canvaslab-video.json."""
    path = Path(path)
    if path.is_dir():
        text = (path / RECIPE_FILE).read_text() if (path / RECIPE_FILE).is_file() else None
    else:
        from canvaslab.video.io import container_tags

        tags = container_tags(path)
        text = next((value for key, value in tags.items() if key.lower() == "comment"), None)
    try:
        recipe = json.loads(text) if text else None
    except ValueError:
        return None
    return recipe if isinstance(recipe, dict) and recipe.get("task") == "video-inpaint" else None


def _identity(recipe: dict[str, Any]) -> str:
    """What must match for frames to be resumed: the request (seed included) and the inputs."""
    return json.dumps({"request": recipe.get("request"), "inputs": recipe.get("inputs")}, sort_keys=True)


def describe(source: Any) -> dict[str, Any] | None:
    """How the recipe remembers a clip or mask: path and a content hash (read in chunks: clips are big)."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        path = Path(source).resolve()
        entry: dict[str, Any] = {"path": str(path)}
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as file:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    digest.update(chunk)
            entry["sha256"] = digest.hexdigest()
        return entry
    arrays = source if isinstance(source, (list, tuple)) else [source]
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return {"path": None, "sha256": digest.hexdigest()}


# -- the frames --------------------------------------------------------------------------------


@dataclass
class _Frame:
    index: int
    rgb: np.ndarray
    hole: np.ndarray


class _Runner:
    """Reads the clip once, in order, and fills what is not finished yet."""

    def __init__(self, clip: Clip, masks: Masks, request: VideoInpaintRequest, seed: int, work: WorkFolder,
                 start: int, end: int, on_frame: OnFrame | None) -> None:
        self.clip, self.request, self.seed, self.work = clip, request, seed, work
        self.start, self.end, self.on_frame = start, end, on_frame
        self.frame_request = request.frame_request().model_copy(update={"seed": seed})
        self.settings = FlowSettings(size=request.flow_size, preset=request.flow_preset.value)
        self.estimator = FlowEstimator(self.settings, clip.size)
        self.key_frames: list[int] = []
        self.resumed = sum(work.has(i) for i in range(start, end))
        self.finished = self.resumed
        self._source = self._read(masks)

    def _read(self, masks: Masks) -> Iterator[_Frame]:
        for index, (rgb, mask) in enumerate(zip(self.clip.frames(self.start, self.end), masks.masks(self.start, self.end)),
                                            self.start):
            yield _Frame(index, rgb, grow(mask, self.request.grow))  # type: ignore[arg-type]

    def run(self) -> None:
        self._report()
        if self.request.method == VideoMethod.propagate:
            self._propagate()
        else:
            self._per_frame()

    def _report(self) -> None:
        report_progress(self.finished, self.end - self.start)
        if self.on_frame is not None:
            self.on_frame(self.finished, self.end - self.start)

    def _done(self, frame: _Frame, filled: np.ndarray) -> None:
        if not self.work.has(frame.index):
            self.work.write(frame.index, composite(frame.rgb, filled, frame.hole, self.request.feather))
            self.finished += 1
            self._report()

    def fill(self, rgb: np.ndarray, hole: np.ndarray, index: int) -> np.ndarray:
        """The image engine on one frame (through the inpaint task: alignment, crops, tiles, colour match)."""
        from canvaslab.tasks.inpaint import inpaint as inpaint_image

        self.key_frames.append(index)
        with quiet_steps():  # the engine's own steps would overwrite the frame count the caller follows
            return inpaint_image(rgb, hole, request=self.frame_request).image

    # -- propagate: a window at a time -------------------------------------------------------

    def _propagate(self) -> None:
        window, context = self.request.window, self.request.context
        ahead: deque[_Frame] = deque()
        for first in range(self.start, self.end, window):
            last = min(first + window, self.end)
            while (not ahead or ahead[-1].index < min(last + context, self.end) - 1) and (frame := next(self._source, None)):
                ahead.append(frame)
            while ahead and ahead[0].index < first:
                ahead.popleft()
            if all(self.work.has(i) for i in range(first, last)):
                continue
            before = [self.work.read(i) for i in range(max(self.start, first - context), first)]
            frames = before + [f.rgb.copy() for f in ahead]
            holes = [np.zeros(self.clip.size[::-1], bool)] * len(before) + [f.hole for f in ahead]
            produce = range(len(before), len(before) + last - first)
            if not any(holes[t].any() for t in produce):
                filled = [frames[t] for t in produce]
            else:
                flows = hole_flows(frames, holes, self.estimator)
                filled = fill_window(frames, holes, flows, produce, self.fill, first - len(before))
            for frame, image in zip(list(ahead)[: last - first], filled):
                self._done(frame, image)

    # -- per frame: the engine on each, the previous result warped in --------------------------

    def _per_frame(self) -> None:
        blend = self.request.temporal_blend
        previous: _Frame | None = None
        previous_out: np.ndarray | None = None
        for frame in self._source:
            if self.work.has(frame.index):
                previous, previous_out = frame, None
                continue
            if previous is not None and previous_out is None and blend > 0:
                previous_out = self.work.read(previous.index)
            out = frame.rgb
            if frame.hole.any():
                start = frame.rgb.copy()
                warped = None
                if blend > 0 and previous is not None and previous_out is not None:
                    warped = self._warp(previous, previous_out, frame)
                    start[frame.hole] = warped[frame.hole]
                out = self.fill(start, frame.hole, frame.index)
                if warped is not None:
                    mixed = (1 - blend) * out.astype(np.float32) + blend * warped.astype(np.float32)
                    out = np.where(frame.hole[..., None], np.clip(np.rint(mixed), 0, 255).astype(np.uint8), out)
            self._done(frame, out)
            previous, previous_out = frame, self.work.read(frame.index) if blend > 0 else None

    def _warp(self, previous: _Frame, previous_out: np.ndarray, frame: _Frame) -> np.ndarray:
        """The previous result moved onto this frame's hole by the completed flow (this frame -> previous)."""
        from canvaslab.video.propagate import sample_known

        estimator = self.estimator
        small = estimator.small_mask(frame.hole)
        flow = estimator.completed(estimator.grey(frame.rgb, small), estimator.grey(previous.rgb, estimator.small_mask(previous.hole)), small)
        ys, xs = np.nonzero(frame.hole)
        at = estimator.at(flow, xs, ys)
        colours, _ = sample_known(previous_out, np.ones(previous_out.shape[:2], bool), xs + at[:, 0], ys + at[:, 1])
        warped = frame.rgb.copy()
        warped[ys, xs] = np.clip(np.rint(colours), 0, 255).astype(np.uint8)
        return warped
