"""`canvaslab video inpaint` and `video track` through the real entry point: what the outputs keep, --json,
--start/--end, determinism, one-line errors, and a run killed mid-way that a rerun finishes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest

from canvaslab.video import inpaint
from canvaslab.video.synthetic import synthetic_clip
from conftest import write_png

from .clips import read_frames, read_video, write_frames, write_video
from .conftest import photo

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=ENV, check=False)


def invoke(*args):
    """In this process (typer's runner): for what needs no fresh process."""
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _masks_folder(folder, masks, names=None):
    return write_frames(folder, [m.astype(np.uint8) * 255 for m in masks], names or [f"{i:06d}" for i in range(len(masks))])


def test_video_file_to_lossless_mkv_keeps_everything(clip, tmp_path):
    source = write_video(tmp_path / "in.mp4", clip.frames, fps=30, audio=True)
    union = np.logical_or.reduce(clip.masks)
    write_png(tmp_path / "mask.png", union.astype(np.uint8) * 255)
    run = cli("--json", "video", "inpaint", source, "--mask", tmp_path / "mask.png", "-o", tmp_path / "out.mkv", "--seed", 2)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["frames"], report["fps"], report["size"], report["seed"]) == (12, 30.0, [96, 64], 2)
    assert 1 <= len(report["key_frames"]) <= 3 and report["resumed"] == 0
    before, after = read_video(source), read_video(tmp_path / "out.mkv")
    assert (len(after["frames"]), after["fps"], after["size"]) == (12, Fraction(30), (96, 64))
    assert after["audio"]["codec"] == "aac"  # copied
    # FFV1 is lossless: outside the mask every pixel is the decoded input's, in every frame
    for out, original in zip(after["frames"], before["frames"]):
        assert np.array_equal(out[~union], original[~union])
        assert not np.array_equal(out[union], original[union])


def test_frames_folder_range_equals_the_python_api(clip, tmp_path):
    names = [f"img{i:03d}" for i in range(12)]
    frames = write_frames(tmp_path / "frames", clip.frames, names)
    masks = _masks_folder(tmp_path / "masks", clip.masks, names)
    run = cli("-q", "video", "inpaint", frames, "--mask", masks, "-o", tmp_path / "cli", "--seed", 5,
              "--start", 2, "--end", 10, "--fps", 12, "--window", 4, "--context", 2)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "cli") and run.stderr == ""
    assert sorted(p.stem for p in (tmp_path / "cli").glob("*.png")) == names[2:10]
    # same seed, another process: the same frames, bit for bit
    inpaint(frames, masks, tmp_path / "api", seed=5, start=2, end=10, fps=12, window=4, context=2)
    outputs = read_frames(tmp_path / "cli")
    assert all(np.array_equal(x, y) for x, y in zip(outputs, read_frames(tmp_path / "api")))
    for out, original, mask in zip(outputs, clip.frames[2:10], clip.masks[2:10]):
        assert np.array_equal(out[~mask], original[~mask])


@pytest.mark.parametrize("args, message", [
    (["{tmp}/none.mp4", "--mask", "{tmp}/m.png", "-o", "{tmp}/o.mp4"], "clip not found"),
    (["{tmp}/frames", "--mask", "{tmp}/m.png", "-o", "{tmp}/o.jpg"], "cannot write video as o.jpg"),
    (["{tmp}/frames", "--mask", "{tmp}/m.png", "-o", "{tmp}/o", "--end", "40"], "past the clip's end"),
    (["{tmp}/frames", "--mask", "{tmp}/m.png", "-o", "{tmp}/o", "--temporal-blend", "0.3"], "applies to --method per-frame"),
    (["{tmp}/frames", "--mask", "{tmp}/m.png", "-o", "{tmp}/o.mkv", "--fps", "1e-7"], "fps=1e-07: Input should be greater than or equal to 0.001"),  # was a ZeroDivisionError
])
def test_bad_input_is_one_line_and_a_failure(clip, tmp_path, args, message):
    write_frames(tmp_path / "frames", clip.frames[:3])
    write_png(tmp_path / "m.png", clip.masks[0].astype(np.uint8) * 255)
    run = invoke("video", "inpaint", *[a.format(tmp=tmp_path) for a in args])
    assert run.exit_code not in (0, None)
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.png"))


def test_track_then_inpaint_with_the_saved_masks(tmp_path):
    clip = synthetic_clip(photo("coffee.png"), photo("chelsea.png"), frames=8, size=(192, 128), speed=2.0)
    frames = write_frames(tmp_path / "frames", clip.frames, [f"{i:06d}" for i in range(8)])
    write_png(tmp_path / "first.png", clip.masks[0].astype(np.uint8) * 255)
    run = invoke("--json", "video", "track", frames, "--mask", tmp_path / "first.png", "-o", tmp_path / "masks")
    assert run.exit_code == 0, run.stderr
    assert json.loads(run.stdout)["keys"] == [0] and json.loads(run.stdout)["drifting"] == []
    run = invoke("video", "inpaint", frames, "--mask", tmp_path / "masks", "-o", tmp_path / "out", "--seed", 1)
    assert run.exit_code == 0, run.stderr
    assert len(read_frames(tmp_path / "out")) == 8
    # the progress bar counts frames (with elapsed time and ETA) on stderr; stdout is the output alone
    assert "filling" in run.stderr and "8/8" in run.stderr and run.stdout.strip() == str(tmp_path / "out")


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    """A real process killed mid-clip: the rerun keeps its finished frames and the video equals an uninterrupted run's."""
    clip = synthetic_clip(photo("coffee.png"), photo("chelsea.png"), frames=16, size=(128, 80))
    frames = write_frames(tmp_path / "frames", clip.frames, [f"{i:06d}" for i in range(16)])
    masks = _masks_folder(tmp_path / "masks", clip.masks)
    output = tmp_path / "out.mkv"
    args = ["video", "inpaint", frames, "--mask", masks, "-o", output, "--seed", 3, "--window", 4, "--context", 2]
    work = tmp_path / ".out.mkv.canvaslab" / "frames"
    process = subprocess.Popen([sys.executable, "-m", "canvaslab", "-q", *map(str, args)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and not (work.is_dir() and any(work.glob("*.png"))) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(work.glob("*.png")))
    assert 0 < finished < 16 and not output.exists()  # killed mid-way: some frames kept, no video yet
    run = cli("--json", *args)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["resumed"] >= finished
    assert not work.parent.exists()  # the work folder goes once the video is written
    whole = inpaint(frames, masks, tmp_path / "whole", seed=3, window=4, context=2)
    resumed = read_video(output)["frames"]
    assert len(resumed) == whole.frames == 16
    assert all(np.array_equal(a, b) for a, b in zip(resumed, read_frames(tmp_path / "whole")))


def test_an_output_that_is_an_input_is_refused_and_the_clip_kept(clip, tmp_path):
    """`-o clip.mp4` for `clip.mp4` replaced the clip with its result; `track -o masks.png` made a folder named
    like an image."""
    source = write_video(tmp_path / "in.mp4", clip.frames[:3])
    mask = write_png(tmp_path / "m.png", clip.masks[0].astype(np.uint8) * 255)
    before = source.read_bytes(), mask.read_bytes()
    for args, message in ((["inpaint", source, "--mask", mask, "-o", source], "is also an input"),
                          (["inpaint", source, "--mask", mask, "-o", mask], "is also an input"),
                          (["track", source, "--mask", mask, "-o", tmp_path / "masks.png"], "looks like a file name")):
        run = invoke("video", *args)
        assert run.exit_code == 2, run.output
        assert message in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    assert (source.read_bytes(), mask.read_bytes()) == before
    assert not (tmp_path / "masks.png").exists()


def test_a_file_that_is_not_a_video_is_one_line_without_ffmpeg_chatter(tmp_path):
    """FFmpeg's "moov atom not found" reached the terminal (Python logging's last resort) above the error."""
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    write_png(tmp_path / "m.png", np.zeros((8, 8), np.uint8))
    run = cli("video", "inpaint", fake, "--mask", tmp_path / "m.png", "-o", tmp_path / "o.mkv")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"error: cannot read {fake} as a video: Invalid data found when processing input"]


def test_info_and_replay_read_a_video_outputs_recipe(clip, tmp_path):
    """`canvaslab info clean.mkv` and `replay clean.mkv` said "not an image": the recipe the video carries (its
    container's comment tag; a frames folder's .canvaslab-video.json) was written but nothing read it."""
    frames = write_frames(tmp_path / "frames", clip.frames[:6])
    mask = write_png(tmp_path / "m.png", np.logical_or.reduce(clip.masks[:6]).astype(np.uint8) * 255)
    for output in (tmp_path / "out.mkv", tmp_path / "out-frames"):
        assert invoke("video", "inpaint", frames, "--mask", mask, "-o", output, "--seed", 3).exit_code == 0
        info = invoke("--json", "info", output)
        assert info.exit_code == 0, info.output
        recipe = json.loads(info.stdout)["recipe"]
        assert recipe["task"] == "video-inpaint" and recipe["request"]["seed"] == 3
        again = tmp_path / f"again{output.suffix}"
        replay = invoke("replay", output, "-o", again, "--check")
        assert replay.exit_code == 0, replay.output
        assert "identical frames" in replay.stderr and replay.stdout.strip() == str(again)
        originals = read_video(output)["frames"] if output.suffix else read_frames(output)
        replayed = read_video(again)["frames"] if output.suffix else read_frames(again)
        assert len(replayed) == 6 and all(np.array_equal(a, b) for a, b in zip(originals, replayed))
    (tmp_path / "m.png").unlink()
    gone = invoke("replay", tmp_path / "out.mkv", "-o", tmp_path / "third.mkv")
    assert gone.exit_code == 2 and "m.png" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1, gone.stderr


def test_a_variable_frame_rate_clip_is_named_in_a_notice(clip, tmp_path):
    """A phone clip's frames come at uneven intervals; the output is written at one constant rate, which
    changed its timing without a word."""
    import av

    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "bgr0"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for index, rgb in enumerate(clip.frames[:6]):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="bgr0")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 40 if index % 2 else 100
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    write_png(tmp_path / "m.png", clip.masks[0].astype(np.uint8) * 255)
    run = invoke("--json", "video", "inpaint", path, "--mask", tmp_path / "m.png", "-o", tmp_path / "o.mkv", "--seed", 1)
    assert run.exit_code == 0, run.output
    notices = json.loads(run.stdout)["notices"]
    assert any("variable frame rate" in n for n in notices), notices
    steady = write_video(tmp_path / "steady.mkv", clip.frames[:6])
    run = invoke("--json", "video", "inpaint", steady, "--mask", tmp_path / "m.png", "-o", tmp_path / "p.mkv", "--seed", 1)
    assert not any("variable frame rate" in n for n in json.loads(run.stdout)["notices"])


def test_an_inverted_video_mask_gets_a_notice(clip, tmp_path):
    frames = write_frames(tmp_path / "frames", clip.frames[:3])
    inverted = write_png(tmp_path / "m.png", np.where(clip.masks[0], 0, 255).astype(np.uint8))
    run = invoke("--json", "video", "inpaint", frames, "--mask", inverted, "-o", tmp_path / "o", "--seed", 1)
    assert run.exit_code == 0, run.output
    assert any("--mask-mode black" in n for n in json.loads(run.stdout)["notices"])


def test_a_run_that_fails_before_any_frame_leaves_nothing_behind(clip, tmp_path):
    """A run that failed at its engine (no weights) left its work folder, and the corrected command was then
    refused as 'another run' until the user found and deleted .out.mkv.canvaslab."""
    source = write_video(tmp_path / "in.mkv", clip.frames[:3])
    mask = write_png(tmp_path / "m.png", clip.masks[0].astype(np.uint8) * 255)
    for output in (tmp_path / "out.mkv", tmp_path / "frames-out"):
        failed = invoke("video", "inpaint", source, "--mask", mask, "-o", output, "--engine", "lama",
                        "--model", tmp_path / "none.pt")
        assert failed.exit_code == 3 and "none.pt" in failed.stderr, failed.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv", "m.png"] + (["out.mkv"] if output.suffix == "" else [])
        assert failed.stderr.startswith("error:"), failed.stderr  # no bar, no empty line above the error
        done = invoke("video", "inpaint", source, "--mask", mask, "-o", output, "--seed", 1)
        assert done.exit_code == 0, done.output


def test_an_output_that_cannot_be_written_is_one_line(clip, tmp_path):
    """-o under a file (or a read-only place) was 'unexpected NotADirectoryError ... please report it'."""
    source = write_video(tmp_path / "in.mkv", clip.frames[:3])
    mask = write_png(tmp_path / "m.png", clip.masks[0].astype(np.uint8) * 255)
    (tmp_path / "a-file").write_text("")
    for output in (tmp_path / "a-file" / "o.mkv", tmp_path / "a-file" / "frames"):
        run = invoke("video", "inpaint", source, "--mask", mask, "-o", output)
        assert run.exit_code == 2, run.output
        assert run.stderr.startswith("error: cannot write") and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_the_readme_call_works_after_a_plain_import():
    import subprocess
    import sys

    code = "import canvaslab; print(canvaslab.video.inpaint.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "canvaslab.video.inpainting"


def test_a_tracked_mask_folder_carries_its_recipe(tmp_path):
    """`video track` wrote masks that `info` and `replay` could not read: the folder now says how it was made
    (key frames, settings, clip and key masks by path and sha256) and `replay --check` makes it again."""
    clip = synthetic_clip(photo("coffee.png"), photo("chelsea.png"), frames=6, size=(96, 64), speed=2.0)
    video = write_video(tmp_path / "clip.mkv", clip.frames, codec="ffv1")
    keys = _masks_folder(tmp_path / "keys", [clip.masks[0], clip.masks[3]], ["0", "3"])
    masks = tmp_path / "masks"
    assert invoke("video", "track", video, "--mask", keys, "-o", masks, "--flow-size", 64).exit_code == 0
    info = invoke("--json", "info", masks)
    assert info.exit_code == 0, info.output
    recipe = json.loads(info.stdout)["recipe"]
    assert recipe["task"] == "video-track" and recipe["keys"] == [0, 3] and recipe["request"]["flow_size"] == 64
    assert recipe["inputs"]["clip"]["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert set(recipe["inputs"]["mask"]["files"]) == {"0.png", "3.png"}
    replay = invoke("replay", masks, "--check")
    assert replay.exit_code == 0, replay.output
    assert "identical masks" in replay.stderr and replay.stdout.strip() == str(tmp_path / "masks-replay")
    assert sorted(p.name for p in (tmp_path / "masks-replay").glob("*.png")) == sorted(p.name for p in masks.glob("*.png"))
    # a mask corrected by hand is not what tracking made: --check says so and fails
    write_png(masks / "000005.png", np.zeros((64, 96), np.uint8))
    again = invoke("replay", masks, "-o", tmp_path / "again", "--check")
    assert again.exit_code == 1 and "000005" in again.stderr, again.output
    video.unlink()
    gone = invoke("replay", masks, "-o", tmp_path / "third")
    assert gone.exit_code == 2 and "clip.mkv" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
