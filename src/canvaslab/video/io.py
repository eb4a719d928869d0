"""Clips in and out: video files through PyAV (whose wheels carry their own FFmpeg libraries), folders
of frames, and in-memory frames (Python).

Frames are read one at a time, in order, as HxWx3 uint8 RGB, so a clip of any length costs the memory
of the frames a caller keeps. A video file's colour range and matrix are read from each frame and
written back on the output's stream; its first audio stream is copied packet by packet (re-encoded only
when the output container cannot hold its codec, with a notice). Outputs are written atomically.

Output containers, by suffix: .mp4/.m4v/.mov (H.264, --crf), .webm (VP9, --crf), .mkv (FFV1 in RGB:
lossless, every pixel as written), .gif (256-colour palette, no audio); or a folder of PNG frames.
"""

from __future__ import annotations

import functools
import logging

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from canvaslab.core.image import DEFAULT_MAX_PIXELS, atomic_write_bytes, atomic_writer, load_image, load_mask
from canvaslab.core.notices import notice
from canvaslab.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif", ".avi")
OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif")
# suffix -> (container, video codec, pixel format); RGB in FFV1 keeps every value, YUV 4:2:0 is what players expect.
CONTAINERS = {
    ".mp4": ("mp4", "libx264", "yuv420p"),
    ".m4v": ("mp4", "libx264", "yuv420p"),
    ".mov": ("mov", "libx264", "yuv420p"),
    ".webm": ("webm", "libvpx-vp9", "yuv420p"),
    ".mkv": ("matroska", "ffv1", "bgr0"),
    ".gif": ("gif", "gif", "rgb8"),
}
# Audio codecs each container holds as they are; others are re-encoded to the first one (None: no audio).
AUDIO_CODECS: dict[str, tuple[str, ...] | None] = {
    "mp4": ("aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"),
    "mov": ("aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le"),
    "webm": ("opus", "vorbis"),
    "matroska": (),  # any
    "gif": None,
}
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus"}
DEFAULT_FPS = Fraction(25)
DEFAULT_CRF = 18  # x264's "visually lossless"; VP9 takes the same scale


@functools.cache
def _av() -> Any:
    try:
        import av
    except ModuleNotFoundError:
        raise InputError("video needs the PyAV package, which is not installed: pip install 'canvaslab[video]'") from None
    # FFmpeg's messages reach Python's logging as "libav.*" records; with no handler configured, logging's
    # last resort printed them bare on stderr ("moov atom not found") above our one-line error. PyAV keeps
    # the last error for its exception, which our message quotes. An application's own handlers still see them.
    av.logging.set_level(av.logging.ERROR)
    logging.getLogger("libav").addHandler(logging.NullHandler())
    return av


def _failure(exc: BaseException) -> str:
    """FFmpeg's reason without its errno and the path, which the message names already."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(reason).split())[:200] or type(exc).__name__


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Colour:
    """How a video's YUV samples map to RGB (FFmpeg's enum values); None: unknown, or a frames folder."""

    range: int = 0  # 1 limited (MPEG), 2 full (JPEG)
    space: int = 2  # matrix coefficients (2: unspecified)
    primaries: int = 2
    trc: int = 2


class Clip:
    """A clip's frames in order, with what the output keeps: size, frame rate, names, colour, audio."""

    source: str
    size: tuple[int, int]  # (width, height)
    count: int  # frames (a video file's header may be wrong: reading stops at the real end)
    fps: Fraction
    colour: Colour | None = None
    audio: Path | None = None  # the file whose first audio stream the output carries
    seconds: float | None = None  # a video file's length by its header (its longest stream)

    def name(self, index: int) -> str:
        """The stem of frame `index`: the file's for a frames folder, the zero-padded index otherwise."""
        return f"{index:06d}"

    def frames(self, start: int = 0, end: int | None = None) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def time(self, index: int) -> float:
        """Seconds from the clip's start to frame `index` (audio is cut there)."""
        return float(index / self.fps)


class VideoFile(Clip):
    def __init__(self, path: Path, *, max_pixels: int, max_frames: int | None = None) -> None:
        av = _av()
        self.path, self.source, self.max_frames = path, str(path), max_frames
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise InputError(f"{path} has no video stream")
                stream = container.streams.video[0]
                width, height = stream.codec_context.width, stream.codec_context.height
                if width * height > max_pixels:
                    raise InputError(f"{path} is {width}x{height} = {width * height:,} pixels a frame, over the limit of "
                                     f"{max_pixels:,} (--max-pixels)")
                self.size = (width, height)
                self.fps = Fraction(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
                self.count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
                self.audio = path if container.streams.audio else None
                self.seconds = _header_seconds(container)
                context = stream.codec_context
                self.colour = Colour(int(context.color_range), int(context.colorspace), int(context.color_primaries),
                                     int(context.color_trc))
        except InputError:
            raise
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise InputError(f"cannot read {path} as a video: {_failure(exc)}") from None
        if self.count == 0 or width == 0:
            raise InputError(f"{path} holds no frames")
        if max_frames is not None and self.count > max_frames:
            raise InputError(f"{path} has {self.count:,} frames, over the limit of {max_frames:,}")

    def _check_interval(self, index: int, previous: float | None, time: float) -> None:
        """One notice per clip when frames do not come every 1/fps seconds (off by more than a quarter frame)."""
        if previous is None or getattr(self, "_told_vfr", False):
            return
        if abs((time - previous) * float(self.fps) - 1) > 0.25:
            self._told_vfr = True
            _vfr_notice(self, index, time - previous)

    def frames(self, start: int = 0, end: int | None = None) -> Iterator[np.ndarray]:
        av = _av()
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                previous = None
                for index, frame in enumerate(container.decode(stream)):
                    if end is not None and index >= end:
                        return
                    if frame.time is not None:
                        self._check_interval(index, previous, frame.time)
                        previous = frame.time
                    if self.max_frames is not None and index >= self.max_frames:
                        raise InputError(f"{self.path} holds more than {self.max_frames:,} frames")
                    if index < start:
                        continue
                    if (frame.width, frame.height) != self.size:
                        raise InputError(f"frame {index} of {self.path} is {frame.width}x{frame.height}, not "
                                         f"{self.size[0]}x{self.size[1]} like the first: split the clip where it changes")
                    options = {"src_color_range": frame.color_range} if frame.color_range else {}
                    yield frame.to_ndarray(format="rgb24", **options)
        except InputError:
            raise
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise InputError(f"cannot decode {self.path}: {_failure(exc)}") from None


def _vfr_notice(clip: "VideoFile", index: int, gap: float) -> None:
    fps = float(clip.fps)
    notice(f"{clip.path.name} has a variable frame rate (frame {index} comes {1000 * gap:.0f} ms after the one "
           f"before, not {1000 / fps:.0f} ms): the output shows every frame for 1/{fps:g} s, so its timing differs "
           "from the clip's; for the same timing, make the clip constant-rate first (ffmpeg -fps_mode cfr)")


def container_tags(path: Path) -> dict[str, str]:
    """A video file's container metadata (tags such as `comment`, where canvaslab keeps its recipe)."""
    av = _av()
    if not path.is_file():
        raise InputError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            return dict(container.metadata)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as a video: {_failure(exc)}") from None


def _header_seconds(container: Any) -> float | None:
    """The longest of the container's and its streams' durations as the header states them (None: unstated).
    A header can lie; this is what a server bounds before any decoding."""
    found = [container.duration / 1_000_000] if container.duration else []
    found += [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
    return max(found) if found else None


class FrameFolder(Clip):
    def __init__(self, folder: Path, *, fps: float | None, max_pixels: int) -> None:
        from canvaslab.tasks.edit import frame_files

        self.source, self.max_pixels = str(folder), max_pixels
        self.paths = frame_files(folder)
        self.count = len(self.paths)
        self.size = load_image(self.paths[0], max_pixels=max_pixels).size
        self.fps = Fraction(fps).limit_denominator(1001) if fps else DEFAULT_FPS
        stems = [p.stem for p in self.paths]
        if len(set(stems)) != len(stems):
            twice = next(s for s in stems if stems.count(s) > 1)
            raise InputError(f"{folder} holds two frames named {twice!r} (different suffixes): keep one")

    def name(self, index: int) -> str:
        return self.paths[index].stem

    def frames(self, start: int = 0, end: int | None = None) -> Iterator[np.ndarray]:
        for index in range(start, self.count if end is None else min(end, self.count)):
            image = load_image(self.paths[index], max_pixels=self.max_pixels)
            if image.size != self.size:
                raise InputError(f"{self.paths[index]} is {image.size[0]}x{image.size[1]}, not {self.size[0]}x"
                                 f"{self.size[1]} like the first frame: every frame must have one size")
            yield image.rgb


class FrameList(Clip):
    """Frames given as arrays (Python)."""

    def __init__(self, frames: Sequence[np.ndarray], *, fps: float | None) -> None:
        self.list = [np.asarray(frame) for frame in frames]
        if not self.list:
            raise InputError("the clip holds no frames")
        first = self.list[0]
        for index, frame in enumerate(self.list):
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or frame.shape != first.shape:
                raise InputError(f"frame {index} must be an HxWx3 uint8 array of the first frame's shape {first.shape}, "
                                 f"got {frame.shape} {frame.dtype}")
        self.source, self.count = "<frames>", len(self.list)
        self.size = (first.shape[1], first.shape[0])
        self.fps = Fraction(fps).limit_denominator(1001) if fps else DEFAULT_FPS

    def frames(self, start: int = 0, end: int | None = None) -> Iterator[np.ndarray]:
        yield from self.list[start:end]


def open_clip(source: Any, *, fps: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
              max_frames: int | None = None) -> Clip:
    """A video file, a folder of frames, or a sequence of HxWx3 uint8 arrays."""
    if isinstance(source, Clip):
        return source
    if isinstance(source, (list, tuple)):
        return FrameList(source, fps=fps)
    path = Path(source)
    if path.is_dir():
        return FrameFolder(path, fps=fps, max_pixels=max_pixels)
    if not path.is_file():
        raise InputError(f"clip not found: {path}")
    if fps is not None:
        raise InputError("--fps is for a folder of frames: a video file keeps its own frame rate")
    return VideoFile(path, max_pixels=max_pixels, max_frames=max_frames)


# -- masks ---------------------------------------------------------------------------------------


class Masks:
    """The mask of each frame: one image for all, a folder of masks by frame name, a mask video, or
    arrays (Python: one HxW bool array, or one per frame). Folders may skip frames only when tracking."""

    def __init__(self, source: Any, clip: Clip, *, mode: str, threshold: int, max_pixels: int,
                 max_frames: int | None = None) -> None:
        self.clip, self.mode, self.threshold, self.max_pixels = clip, mode, threshold, max_pixels
        self.single: np.ndarray | None = None
        self.per_frame: list[np.ndarray] | None = None
        self.by_name: dict[str, Path] = {}
        self.by_number: dict[int, Path] = {}
        self.video: Clip | None = None
        self.folder: Path | None = None
        if source is None:
            raise InputError("video inpaint needs a mask: one image for every frame, a folder of masks named like the "
                             "frames, or a mask video (--mask)")
        if isinstance(source, np.ndarray) and source.ndim == 2:
            self.single = self._checked(source, "the mask")
        elif isinstance(source, (list, tuple)):
            if len(source) != clip.count:
                raise InputError(f"{len(source)} masks for {clip.count} frames: give one per frame")
            self.per_frame = [self._checked(np.asarray(m), f"mask {i}") for i, m in enumerate(source)]
        else:
            path = Path(source)
            if path.is_dir():
                self.folder = path
                self._index_folder(path)
            elif not path.is_file():
                raise InputError(f"mask not found: {path}")
            elif (path.suffix.lower() in VIDEO_SUFFIXES and path.suffix.lower() != ".gif") or _is_animated(path):
                if mode == "alpha":
                    raise InputError("--mask-mode alpha reads an image's transparency; a mask video has none: use white or black")
                self.video = VideoFile(path, max_pixels=max_pixels, max_frames=max_frames)
                if self.video.size != clip.size:
                    raise InputError(f"the mask video is {self.video.size[0]}x{self.video.size[1]} but the clip is "
                                     f"{clip.size[0]}x{clip.size[1]}")
                if self.video.count < clip.count:
                    raise InputError(f"the mask video has {self.video.count} frames but the clip has {clip.count}")
            else:
                self.single = self._read(path)

    def _checked(self, mask: np.ndarray, what: str) -> np.ndarray:
        if mask.dtype != bool or mask.shape != (self.clip.size[1], self.clip.size[0]):
            raise InputError(f"{what} must be an HxW bool array of the clip's size {self.clip.size[0]}x{self.clip.size[1]}, "
                             f"got {mask.shape} {mask.dtype}")
        return mask

    def _read(self, source: Any) -> np.ndarray:
        return load_mask(source, mode=self.mode, size=self.clip.size, threshold=self.threshold, max_pixels=self.max_pixels)

    def _index_folder(self, folder: Path) -> None:
        from canvaslab.tasks.edit import frame_files

        for path in frame_files(folder):
            stem = _strip_marker(path.stem)
            if stem in self.by_name:
                raise InputError(f"{folder} holds two masks for frame {stem!r}: {self.by_name[stem].name}, {path.name}")
            self.by_name[stem] = path
            number = _number(stem)
            if number is not None:
                if number in self.by_number:
                    raise InputError(f"{folder} holds two masks for frame {number}: {self.by_number[number].name}, {path.name}")
                self.by_number[number] = path

    def _folder_path(self, index: int) -> Path | None:
        name = self.clip.name(index)
        if name in self.by_name:
            return self.by_name[name]
        number = index if isinstance(self.clip, (VideoFile, FrameList)) else _number(name)
        return self.by_number.get(number) if number is not None else None

    def key_frames(self, start: int, end: int) -> list[int]:
        """The frames in [start, end) that have a mask of their own (tracking starts from these)."""
        if self.folder is not None:
            return [i for i in range(start, end) if self._folder_path(i) is not None]
        if self.single is not None:
            return [start]
        return list(range(start, end))

    def masks(self, start: int, end: int, *, partial: bool = False) -> Iterator[np.ndarray | None]:
        """Masks of frames start..end-1 (True = fill); None for a frame without one (only when `partial`)."""
        if self.video is not None:
            for frame in self.video.frames(start, end):
                yield self._read(frame)
            return
        for index in range(start, end):
            if self.single is not None:
                # one image is every frame's mask, or, when tracking (`partial`), the first frame's only
                yield None if partial and index != start else self.single
            elif self.per_frame is not None:
                yield self.per_frame[index]
            else:
                path = self._folder_path(index)
                if path is None and not partial:
                    raise InputError(f"no mask for frame {index} ({self.clip.name(index)}) in {self.folder}: give one "
                                     "for every frame, or --track to carry the masks you have to the others")
                yield None if path is None else self._read(path)


MASK_MARKERS = ("_mask", "-mask", ".mask")


def _strip_marker(stem: str) -> str:
    for marker in MASK_MARKERS:
        if stem.endswith(marker):
            return stem[: -len(marker)]
    return stem


def _number(stem: str) -> int | None:
    """The frame number a name ends with ("000012", "frame_12", "12" -> 12), if any."""
    match = re.search(r"(\d+)$", stem)
    return int(match.group(1)) if match else None


def _is_animated(path: Path) -> bool:
    """A GIF of several frames is a mask video; a one-frame GIF is a mask image."""
    if path.suffix.lower() != ".gif":
        return False
    from PIL import Image

    with contextlib.suppress(OSError), Image.open(path) as im:
        return bool(getattr(im, "n_frames", 1) > 1)
    return False


# -- writing -------------------------------------------------------------------------------------


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in OUTPUT_SUFFIXES and not path.is_dir()


def check_output(path: Path) -> None:
    """A video file of a container we write, or else a folder for frames (an image or unwritable video
    name is refused rather than taken for a folder)."""
    from canvaslab.data.records import IMAGE_SUFFIXES

    suffix = path.suffix.lower()
    if path.is_dir() or suffix in OUTPUT_SUFFIXES:
        return
    if path.exists():
        raise InputError(f"{path} is a file: give a video name (.mp4, .webm, .mkv, .gif) or a folder for PNG frames")
    if suffix in VIDEO_SUFFIXES or suffix in IMAGE_SUFFIXES:
        raise InputError(f"cannot write video as {path.name}: use .mp4, .mov, .webm, .mkv (lossless) or .gif, "
                         "or a folder for PNG frames")


def save_mask(path: Path, mask: np.ndarray) -> Path:
    """A bool mask as a grey PNG (white = fill), written atomically."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buffer, "PNG")
    return atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class Encoding:
    """How a video output is encoded: quality, and the input's colour and audio to carry over."""

    fps: Fraction
    size: tuple[int, int]
    crf: int = DEFAULT_CRF
    colour: Colour | None = None
    audio: Path | None = None  # copy this file's first audio stream...
    audio_from: float = 0.0  # ...from this time (s)...
    audio_to: float | None = None  # ...to this one
    metadata: dict[str, str] | None = None


def encode_video(path: Path, frames: Iterator[np.ndarray], encoding: Encoding) -> int:
    """Encode `frames` into `path` (atomically: an existing file stays until the new one is complete),
    with the audio interleaved; returns the number of frames written."""
    av = _av()
    container_name, codec, pix_fmt = CONTAINERS[path.suffix.lower()]
    width, height = encoding.size
    if pix_fmt == "yuv420p" and (width % 2 or height % 2):
        pix_fmt = "yuv444p"  # 4:2:0 needs even sides; 4:4:4 plays in fewer players
        notice(f"{width}x{height} has an odd side, which 4:2:0 video cannot hold: encoded as 4:4:4 (some players refuse "
               "it; an even size, or .mkv, avoids this)")
    written = 0
    try:
        with atomic_writer(path) as file, av.open(file, mode="w", format=container_name) as out:
            stream = out.add_stream(codec, rate=encoding.fps)
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            reformat = _colour_setup(stream, pix_fmt, encoding.colour)
            if codec in ("libx264", "libvpx-vp9"):
                stream.options = {"crf": str(encoding.crf), **({"b": "0"} if codec == "libvpx-vp9" else {})}
            for key, value in (encoding.metadata or {}).items():
                out.metadata[key] = value
            audio = _AudioCopy(av, out, container_name, encoding)
            for rgb in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame = frame.reformat(format=pix_fmt, **reformat)
                frame.pts = written
                for packet in stream.encode(frame):
                    out.mux(packet)
                written += 1
                audio.until(written / encoding.fps)
            for packet in stream.encode(None):
                out.mux(packet)
            audio.until(None)
    except InputError:
        raise
    except (av.error.FFmpegError, ValueError) as exc:
        raise InputError(f"cannot encode {path}: {_failure(exc)}") from None
    return written


def _colour_setup(stream: Any, pix_fmt: str, colour: Colour | None) -> dict[str, Any]:
    """Tag the stream with the input's colour description and say how frames are converted to it."""
    if colour is None or not pix_fmt.startswith("yuv"):
        return {}
    context = stream.codec_context
    options: dict[str, Any] = {}
    if colour.range:
        context.color_range = colour.range
        options["dst_color_range"] = colour.range
    if colour.space not in (2, 0):  # known matrix (0 is RGB, which YUV output cannot keep)
        context.colorspace = colour.space
        options["dst_colorspace"] = colour.space
    if colour.primaries != 2:
        context.color_primaries = colour.primaries
    if colour.trc != 2:
        context.color_trc = colour.trc
    return options


class _AudioCopy:
    """The input's first audio stream, cut to the frames written, muxed in step with the video."""

    def __init__(self, av: Any, out: Any, container_name: str, encoding: Encoding) -> None:
        self.av, self.out, self.encoding = av, out, encoding
        self.source = None
        self.packets: Iterator[Any] = iter(())
        self.pending: Any = None
        if encoding.audio is None:
            return
        allowed = AUDIO_CODECS[container_name]
        if allowed is None:
            notice("a GIF holds no sound: the clip's audio is left out")
            return
        self.source = av.open(str(encoding.audio))
        source = self.source.streams.audio[0]
        self.in_stream = source
        name = source.codec_context.name
        self.copy = not allowed or name in allowed
        if self.copy:
            self.stream = out.add_stream_from_template(source)
        else:
            target = allowed[0]
            notice(f"a .{Path(str(out.name)).suffix or container_name} file cannot hold {name} audio: re-encoded as {target}")
            rate = 48000 if target == "opus" else (source.codec_context.sample_rate or 48000)
            self.stream = out.add_stream(AUDIO_ENCODERS.get(target, target), rate=rate)
            self.stream.layout = source.codec_context.layout.name if source.codec_context.layout else "stereo"
            self.resampler = av.AudioResampler(format=self.stream.codec_context.format or "fltp",
                                               layout=self.stream.layout, rate=rate)
        self.packets = self.source.demux(source)

    def until(self, seconds: float | None) -> None:
        """Mux the audio up to `seconds` of output (None: the rest)."""
        if self.source is None:
            return
        start, stop = self.encoding.audio_from, self.encoding.audio_to
        while True:
            packet, self.pending = self.pending or self._next(), None
            if packet is None:
                break
            if packet.pts is None or (packet.dts is None and self.copy):
                continue  # the demuxer's empty flush packet
            at = float(packet.pts * packet.time_base) - start
            if seconds is not None and at >= seconds:
                self.pending = packet
                return
            if at < 0 or (stop is not None and at + start >= stop):
                continue
            self._mux(packet)
        if seconds is None:
            if not self.copy:
                for packet in self.stream.encode(None):
                    self.out.mux(packet)
            self.source.close()
            self.source = None

    def _next(self) -> Any:
        try:
            return next(self.packets)
        except (StopIteration, RuntimeError):  # PyAV's demuxer ends with either
            return None

    def _mux(self, packet: Any) -> None:
        if self.copy:
            shift = round(self.encoding.audio_from / packet.time_base)
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self.stream
            self.out.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = None
            for converted in self.resampler.resample(frame):
                for out_packet in self.stream.encode(converted):
                    self.out.mux(out_packet)
