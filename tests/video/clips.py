"""Ways to store a clip for the tests: video files through PyAV, folders of PNG frames; and to read them back."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_png

av = pytest.importorskip("av")


def write_video(path: Path, frames: list[np.ndarray], *, fps: int = 25, audio: bool = False, codec: str | None = None,
                pix_fmt: str | None = None, color_range: int = 0) -> Path:
    """Encode `frames` with PyAV (mp4: H.264; mkv: lossless FFV1 RGB), with a 440 Hz AAC tone when `audio`."""
    codec = codec or ("ffv1" if path.suffix == ".mkv" else "libx264")
    pix_fmt = pix_fmt or ("bgr0" if codec == "ffv1" else "yuv420p")
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        reformat = {}
        if color_range:
            stream.codec_context.color_range = color_range
            reformat["dst_color_range"] = color_range
        sound = out.add_stream("aac", rate=44100, layout="mono") if audio else None
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format=pix_fmt, **reformat)
            for packet in stream.encode(picture):
                out.mux(packet)
        if sound is not None:
            samples = int(44100 * len(frames) / fps)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 44100)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024].copy(), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 44100, start
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def read_video(path: Path) -> dict:
    """Frames (RGB), fps, size and the streams of a video file, as a player would see them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24", **({"src_color_range": f.color_range} if f.color_range else {}))
                  for f in container.decode(stream)]
        audio = container.streams.audio[0] if container.streams.audio else None
        return {
            "frames": frames, "fps": Fraction(stream.average_rate), "size": (stream.codec_context.width, stream.codec_context.height),
            "codec": stream.codec_context.name, "color_range": int(stream.codec_context.color_range),
            "audio": None if audio is None else {"codec": audio.codec_context.name, "rate": audio.codec_context.sample_rate,
                                                 "seconds": float(audio.duration * audio.time_base) if audio.duration else None},
            "metadata": dict(container.metadata),
        }


def audio_seconds(path: Path) -> float:
    """The audio's length by its packets (durations as stored)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        ends = [float((p.pts + p.duration) * p.time_base) for p in container.demux(stream) if p.pts is not None]
        starts = [0.0]
        return max(ends) - min(starts)


def write_frames(folder: Path, frames: list[np.ndarray], names: list[str] | None = None) -> Path:
    for index, frame in enumerate(frames):
        write_png(folder / f"{names[index] if names else f'f{index:03d}'}.png", frame)
    return folder


def read_frames(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]
