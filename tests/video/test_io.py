"""Clips in and out: what the output keeps of the input (frames, rate, size, colour range, audio, unmasked pixels),
the ways masks are given, and one-line errors for what cannot be read."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from canvaslab.errors import InputError
from canvaslab.video import inpaint
from conftest import write_png

from .clips import audio_seconds, read_frames, read_video, write_frames, write_video


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def test_mp4_keeps_frames_rate_size_and_audio(clip, tmp_path):
    source = write_video(tmp_path / "in.mp4", clip.frames, fps=24, audio=True)
    write_png(tmp_path / "mask.png", np.logical_or.reduce(clip.masks))  # one mask for every frame
    result = inpaint(source, tmp_path / "mask.png", tmp_path / "out.mp4", seed=1)
    before, after = read_video(source), read_video(tmp_path / "out.mp4")
    assert len(after["frames"]) == len(before["frames"]) == 12 == result.frames
    assert after["fps"] == before["fps"] == Fraction(24)
    assert after["size"] == before["size"] == (96, 64)
    assert after["codec"] == "h264"
    assert after["audio"]["codec"] == before["audio"]["codec"] == "aac"  # copied as it is
    assert abs(audio_seconds(tmp_path / "out.mp4") - audio_seconds(source)) < 0.03
    # outside the mask the frames are the input's within the codec's error (H.264 at crf 18, twice)
    union = np.logical_or.reduce(clip.masks)
    for out, original in zip(after["frames"], before["frames"]):
        assert _psnr(out[~union], original[~union]) > 33
    recipe = json.loads(after["metadata"]["comment"])  # the recipe travels in the container
    assert recipe["task"] == "video-inpaint" and recipe["request"]["seed"] == 1
    assert not list(tmp_path.glob(".out.mp4*"))  # the work folder is gone once the video is written


def test_lossless_mkv_keeps_every_unmasked_pixel(clip, tmp_path):
    source = write_video(tmp_path / "in.mkv", clip.frames)
    masks = write_frames(tmp_path / "masks", [m.astype(np.uint8) * 255 for m in clip.masks],
                         [f"{i:06d}" for i in range(12)])
    inpaint(source, masks, tmp_path / "out.mkv", seed=1)
    out = read_video(tmp_path / "out.mkv")["frames"]
    assert len(out) == 12
    for frame, original, mask in zip(out, clip.frames, clip.masks):
        assert np.array_equal(frame[~mask], original[~mask])


def test_webm_and_gif(clip, tmp_path):
    for name, codec in (("out.webm", "vp9"), ("out.gif", "gif")):
        inpaint(clip.frames, clip.masks, tmp_path / name, seed=1)
        out = read_video(tmp_path / name)
        assert (len(out["frames"]), out["size"], out["codec"]) == (12, (96, 64), codec)


def test_colour_range_is_kept(clip, tmp_path):
    source = write_video(tmp_path / "full.mp4", clip.frames, color_range=2)  # full ("JPEG") range
    inpaint(source, clip.masks, tmp_path / "out.mp4", seed=1)
    before, after = read_video(source), read_video(tmp_path / "out.mp4")
    assert before["color_range"] == after["color_range"] == 2
    union = np.logical_or.reduce(clip.masks)
    for out, original in zip(after["frames"], before["frames"]):
        # read as limited range, the levels would be stretched by 255/219 and shifted by 16: far over this
        assert np.abs(out[~union].astype(int) - original[~union].astype(int)).mean() < 2.5


def test_start_end_cut_frames_and_audio(clip, tmp_path):
    source = write_video(tmp_path / "in.mp4", clip.frames, audio=True)
    masks = write_frames(tmp_path / "masks", [m.astype(np.uint8) * 255 for m in clip.masks], [str(i) for i in range(12)])
    result = inpaint(source, masks, tmp_path / "cut.mp4", seed=1, start=3, end=9)
    out = read_video(tmp_path / "cut.mp4")
    assert result.frames == len(out["frames"]) == 6
    assert abs(audio_seconds(tmp_path / "cut.mp4") - 6 / 25) < 0.05  # audio cut to the frames kept
    frames = inpaint(source, masks, tmp_path / "cut", seed=1, start=3, end=9)
    assert sorted(p.stem for p in frames.path.glob("*.png")) == [f"{i:06d}" for i in range(3, 9)]


def test_frames_folder_in_and_out_keeps_names(clip, tmp_path):
    names = [f"shot_{i * 10:04d}" for i in range(12)]
    frames = write_frames(tmp_path / "frames", clip.frames, names)
    masks = write_frames(tmp_path / "masks", [m.astype(np.uint8) * 255 for m in clip.masks], [f"{n}_mask" for n in names])
    result = inpaint(frames, masks, tmp_path / "out", seed=1, fps=30)
    assert sorted(p.stem for p in result.path.glob("*.png")) == names
    assert result.fps == 30
    for out, original, mask in zip(read_frames(tmp_path / "out"), clip.frames, clip.masks):
        assert np.array_equal(out[~mask], original[~mask])


def test_mask_video(clip, tmp_path):
    masks = write_video(tmp_path / "masks.mkv", [np.repeat(m[..., None].astype(np.uint8) * 255, 3, 2) for m in clip.masks])
    inpaint(clip.frames, masks, tmp_path / "out", seed=1)
    for out, original, mask in zip(read_frames(tmp_path / "out"), clip.frames, clip.masks):
        assert np.array_equal(out[~mask], original[~mask]) and not np.array_equal(out[mask], original[mask])


def test_a_failed_encode_leaves_the_old_output(clip, tmp_path, monkeypatch):
    from canvaslab.video import io

    target = tmp_path / "out.mp4"
    target.write_bytes(b"the previous video")

    def broken(*args, **kwargs):
        raise InputError("cannot encode: disk full")

    monkeypatch.setattr(io, "_colour_setup", broken)
    with pytest.raises(InputError):
        inpaint(clip.frames, clip.masks, target, seed=1)
    assert target.read_bytes() == b"the previous video"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the frames stay for a rerun
    assert len(list((tmp_path / ".out.mp4.canvaslab" / "frames").glob("*.png"))) == 12


@pytest.mark.parametrize("make, message", [
    (lambda c, p: (p / "missing.mp4", c.masks[0], p / "o.mp4"), "clip not found"),
    (lambda c, p: ((p / "x.mp4").write_bytes(b"not a video" * 50) and p / "x.mp4", c.masks[0], p / "o.mp4"), "as a video"),
    (lambda c, p: (c.frames, None, p / "o.mp4"), "needs a mask"),
    (lambda c, p: (c.frames, np.zeros((10, 10), bool), p / "o.mp4"), "clip's size"),
    (lambda c, p: (c.frames, c.masks[:5], p / "o.mp4"), "5 masks for 12 frames"),
    (lambda c, p: (c.frames, c.masks, p / "o.png"), "cannot write video as o.png"),
    (lambda c, p: (c.frames, c.masks, p / "o.avi"), "cannot write video as o.avi"),
])
def test_bad_input_is_one_line(clip, tmp_path, make, message):
    source, mask, output = make(clip, tmp_path)
    with pytest.raises(InputError, match=message) as caught:
        inpaint(source, mask, output, seed=1)
    assert "\n" not in str(caught.value)


def test_missing_mask_frame_says_to_track(clip, tmp_path):
    masks = write_frames(tmp_path / "masks", [m.astype(np.uint8) * 255 for m in clip.masks[:5]], [str(i) for i in range(5)])
    with pytest.raises(InputError, match=r"no mask for frame 5 .*--track"):
        inpaint(clip.frames, masks, tmp_path / "out", seed=1)


@pytest.mark.parametrize("params, message", [
    ({"soft": True, "engine": "diffusion"}, "--soft is not available for video"),
    ({"tiling": "x"}, "--tiling does not apply"),
    ({"start": 5, "end": 5}, "must be after --start"),
    ({"end": 13}, "past the clip's end"),
    ({"temporal_blend": 0.2}, "applies to --method per-frame"),
    ({"fps": 10}, None),
])
def test_request_refusals(clip, tmp_path, params, message):
    if message is None:  # fps is fine for frames given as arrays
        assert inpaint(clip.frames, clip.masks, tmp_path / "out", seed=1, **params).fps == 10
        return
    with pytest.raises(InputError, match=message):
        inpaint(clip.frames, clip.masks, tmp_path / "out", seed=1, **params)
