"""Mask tracking: masks drawn on a few key frames, carried to the others by the optical flow.

Each frame's mask is the previous frame's moved by the object's own motion (a similarity transform
fitted to the forward flow of the mask's reliable pixels: no completion here), on the way from the
nearest key frame before it. A key frame's mask replaces whatever tracking brought there. Masks only move forwards in time, so the
first frame to process needs a key mask.

Drift check. Tracking errors add up, so every tracked mask is scored on two things and a notice names
the first frame of each run where either goes wrong:
- reliability: the share of the previous mask's pixels whose flow does not come back to where it
  started (forward flow then backward flow off by more than 1 px at the flow's scale): where the
  object is occluded, blurred or leaves the picture, the flow there is a guess; drift above 30 %;
- size: the mask's area against its key frame's; drift below half or above twice.
`TrackReport.frames` holds both for every frame. Save the masks (`canvaslab video track ... -o DIR`),
correct the frames that drift (or add key masks there) and give the folder as --mask.

Recipe. A saved folder also holds .canvaslab-track.json: the request, the key frames, the clip and the key
masks by path and sha256 (a key mask folder: each file's), the range and size; `canvaslab info DIR` prints
it and `canvaslab replay DIR --check` tracks again and compares every mask.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from canvaslab.core.image import DEFAULT_MAX_PIXELS, atomic_write_bytes
from canvaslab.core.notices import notice
from canvaslab.core.progress import check_cancelled
from canvaslab.errors import InputError
from canvaslab.video.flow import FlowEstimator, FlowSettings
from canvaslab.video.io import Clip, Masks, save_mask
from canvaslab.video.requests import TrackRequest

UNRELIABLE_PX = 1.0  # forward-backward flow error (flow-scale px) above which a pixel's motion is a guess
DRIFT_UNRELIABLE = 0.3  # share of unreliable mask pixels that counts as drift
DRIFT_AREA = 2.0  # area change against the key frame (either way) that counts as drift
# Suffixes of files, not folders: `-o masks.png` is a slip for a folder of masks.
FOLDER_LOOKALIKES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".mp4", ".mov", ".webm", ".mkv", ".avi")
TRACK_RECIPE_FILE = ".canvaslab-track.json"  # in a tracked mask folder: how its masks were made
TRACK_TASK = "video-track"
MIN_FIT_PIXELS = 8  # reliable pixels (flow scale) a motion fit needs; fewer: all the mask's pixels are used


@dataclass(frozen=True)
class TrackedFrame:
    index: int
    key: int  # the key frame this mask comes from (itself for a key frame)
    unreliable: float  # share of the previous mask's pixels whose flow fails the forward-backward check
    area: float  # mask area / key frame's mask area

    @property
    def drifts(self) -> bool:
        return self.unreliable > DRIFT_UNRELIABLE or not 1 / DRIFT_AREA <= self.area <= DRIFT_AREA

    def as_dict(self) -> dict[str, object]:
        return {"frame": self.index, "key": self.key, "unreliable": round(self.unreliable, 4),
                "area": round(self.area, 4), "drifts": self.drifts}


@dataclass
class TrackReport:
    frames: list[TrackedFrame] = field(default_factory=list)

    @property
    def keys(self) -> list[int]:
        return [f.index for f in self.frames if f.key == f.index]

    @property
    def drifting(self) -> list[int]:
        return [f.index for f in self.frames if f.drifts]


def track_masks(
    clip: Clip, masks: Masks, start: int, end: int, settings: FlowSettings,
    write: Callable[[int, np.ndarray], None], on_frame: Callable[[int], None] | None = None,
) -> TrackReport:
    """Carry the key masks of frames start..end-1 to every frame; `write(index, mask)` gets each mask."""
    keys = masks.key_frames(start, end)
    if not keys:
        raise InputError(f"--track needs a mask on at least one frame from {start}: none of the masks names one")
    if keys[0] != start:
        raise InputError(f"tracking carries masks forwards, so the first frame processed ({clip.name(start)}) needs a "
                         f"mask; the first one given is for frame {keys[0]} ({clip.name(keys[0])}): add one, or --start {keys[0]}")
    estimator = FlowEstimator(settings, clip.size)
    report = TrackReport()
    previous_grey = previous_mask = None
    key, key_area, drifting = start, 1, False
    for index, (frame, given) in enumerate(zip(clip.frames(start, end), masks.masks(start, end, partial=True)), start):
        check_cancelled()
        grey = estimator.grey(frame)
        if given is not None:
            mask, key, key_area, drifting = given, index, max(1, int(given.sum())), False
            entry = TrackedFrame(index, index, 0.0, 1.0)
        else:
            mask, unreliable = _carry(estimator, previous_grey, grey, previous_mask)  # type: ignore[arg-type]
            entry = TrackedFrame(index, key, unreliable, float(mask.sum()) / key_area)
            if entry.drifts and not drifting:
                notice(f"the tracked mask drifts from frame {index} ({clip.name(index)}; from key frame {key}: "
                       f"{entry.unreliable:.0%} of its motion unreliable, area x{entry.area:.2f}): check it, and give a "
                       "key mask there")
            drifting = entry.drifts
        report.frames.append(entry)
        write(index, mask)
        previous_grey, previous_mask = grey, mask
        if on_frame is not None:
            on_frame(index)
    return report


def _carry(estimator: FlowEstimator, previous: np.ndarray, current: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """`mask` (of the previous frame) moved to the current frame, and the share of its pixels whose motion
    fails the forward-backward check.

    The mask moves by one similarity transform (shift, rotation, scale) fitted with RANSAC to the forward
    flow of its reliable pixels, not pixel by pixel: DIS smooths the flow across the object's outline, so
    a per-pixel warp takes the background's motion at the leading edge and the mask erodes and lags a
    little more every frame (measured on the synthetic clip: IoU 0.73 after 11 frames, against 0.9+).
    An object that changes shape is followed by its overall motion; the drift check says when that fails."""
    height, width = mask.shape
    backward = estimator.raw(current, previous)  # current(p) ~ previous(p + backward(p))
    forward = estimator.raw(previous, current)
    small = estimator.small_mask(mask)
    if not small.any():
        return np.zeros_like(mask), 0.0
    ys, xs = np.nonzero(small)
    f = forward[ys, xs]
    h, w = small.shape
    tx = np.clip(np.rint(xs + f[:, 0]).astype(np.int64), 0, w - 1)
    ty = np.clip(np.rint(ys + f[:, 1]).astype(np.int64), 0, h - 1)
    error = np.linalg.norm(f + backward[ty, tx], axis=1)
    reliable = error <= UNRELIABLE_PX
    unreliable = float(1 - reliable.mean())
    use = reliable if reliable.sum() >= MIN_FIT_PIXELS else np.ones_like(reliable)
    # cell centres in full-resolution pixels, so the transform applies to the mask as it is
    points = np.stack([(xs[use] + 0.5) / estimator.scale - 0.5, (ys[use] + 0.5) / estimator.scale - 0.5], 1)
    moved_points = points + f[use] / estimator.scale
    transform = None
    if len(points) >= 3:
        transform, _ = cv2.estimateAffinePartial2D(points.astype(np.float32), moved_points.astype(np.float32),
                                                   method=cv2.RANSAC, ransacReprojThreshold=1.0 / estimator.scale)
    if transform is None:  # degenerate (a one-pixel mask, a line): the mean motion
        transform = np.array([[1, 0, *f[use].mean(0)[:1] / estimator.scale], [0, 1, *f[use].mean(0)[1:] / estimator.scale]])
    moved = cv2.warpAffine(mask.astype(np.float32), transform.astype(np.float64), (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return moved >= 0.5, unreliable


@dataclass
class TrackResult:
    folder: Path
    report: TrackReport
    seconds: float


def track(clip: Any, mask: Any, output: str | Path, request: TrackRequest | None = None, *,
          max_pixels: int = DEFAULT_MAX_PIXELS, on_frame: Callable[[int, int], None] | None = None,
          **params: Any) -> TrackResult:
    """Carry the masks of key frames (`mask`: one image for the first frame, or a folder naming some
    frames) to every frame of `clip`; write them to the folder `output` (white = fill, named like the
    frames, plus track.json with each frame's drift check and .canvaslab-track.json with the recipe), ready
    to correct and give as a mask folder."""
    from canvaslab.tasks.batch import refuse_input_as_output
    from canvaslab.tasks.requests import build_request
    from canvaslab.video.io import open_clip

    if request is None:
        request = build_request(TrackRequest, params)  # type: ignore[arg-type]
    elif params:
        raise InputError("pass either request= or keyword parameters, not both")
    started = time.perf_counter()
    source = open_clip(clip, fps=request.fps, max_pixels=max_pixels)
    start = request.start or 0
    end = source.count if request.end is None else min(request.end, source.count)
    if start >= source.count:
        raise InputError(f"--start {start} is past the clip's last frame ({source.count - 1})")
    folder = Path(output)
    refuse_input_as_output(folder, clip, mask)
    if not folder.exists() and folder.suffix.lower() in FOLDER_LOOKALIKES:
        raise InputError(f"-o {folder} looks like a file name: the tracked masks go to a folder (e.g. -o masks/)")
    if folder.exists() and (not folder.is_dir() or any(folder.glob("*.png"))):
        raise InputError(f"{folder} is not an empty folder: tracked masks go to a new one, so masks you corrected are never overwritten")
    masks = Masks(mask, source, mode=request.mask_mode.value, threshold=request.threshold, max_pixels=max_pixels)
    settings = FlowSettings(size=request.flow_size, preset=request.flow_preset.value)

    def write(index: int, mask_: np.ndarray) -> None:
        save_mask(folder / f"{source.name(index)}.png", mask_)

    progress = None if on_frame is None else (lambda index: on_frame(index - start + 1, end - start))
    report = track_masks(source, masks, start, end, settings, write, progress)
    atomic_write_bytes(folder / "track.json", json.dumps([f.as_dict() for f in report.frames], indent=1).encode())
    recipe = track_recipe(request, clip, mask, source, (start, end), report)
    atomic_write_bytes(folder / TRACK_RECIPE_FILE, json.dumps(recipe, indent=1).encode())
    return TrackResult(folder, report, time.perf_counter() - started)


def track_recipe(request: TrackRequest, clip_arg: Any, mask_arg: Any, clip: Clip, span: tuple[int, int],
                 report: TrackReport) -> dict[str, Any]:
    """How a tracked folder was made: the request, the clip and key masks (path and sha256; a key mask
    folder: each image file's sha256), the range, the clip's frame count, rate and size, the key frames."""
    from canvaslab import __version__
    from canvaslab.data.records import IMAGE_SUFFIXES
    from canvaslab.video.inpainting import describe

    mask = describe(mask_arg)
    if isinstance(mask_arg, (str, Path)) and Path(mask_arg).is_dir():
        mask["files"] = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(Path(mask_arg).iterdir())
                         if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES}
    inputs = {"clip": describe(clip_arg), "mask": mask, "range": list(span), "frames": clip.count, "fps": str(clip.fps)}
    return {"canvaslab": __version__, "task": TRACK_TASK, "request": request.model_dump(mode="json"), "inputs": inputs,
            "size": list(clip.size), "keys": report.keys}


def read_track_recipe(folder: str | Path) -> dict[str, Any] | None:
    """The recipe a tracked mask folder carries; None when it has none (not made by `video track`)."""
    path = Path(folder) / TRACK_RECIPE_FILE
    try:
        recipe = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return recipe if isinstance(recipe, dict) and recipe.get("task") == TRACK_TASK else None
