"""Video inpainting: flow-guided propagation against per-frame PatchMatch, and speed/memory on a long clip.

    python benchmarks/video.py quality [--size 320x192] [--frames 24]
    python benchmarks/video.py speed [--size 854x480] [--seconds 5,10]
    python benchmarks/video.py strip docs/images/video-strip.png

quality: synthetic clips made here from real photos (`canvaslab.video.synthetic_clip`: a slow pan across
a photo, 1 px a frame, with an ellipse cut from another photo crossing two thirds of the frame), so the
true background behind the object is known in every frame. Clips: coffee behind the cat's face,
rocket behind the cat's face, chelsea behind a piece of coffee. The mask is the object grown by 2 px
(what a user paints). Methods, all with the default engine (patchmatch) and seed 1:

- propagate: `canvaslab video inpaint` as it comes (flow-guided propagation; the engine paints only
  what no frame shows, on key frames);
- per-frame: patchmatch on every frame on its own (--method per-frame --temporal-blend 0);
- per-frame+blend: per-frame with the previous result warped in and blended (--temporal-blend 0.5).

Metrics over all frames of a clip: hole PSNR (dB) and hole SSIM (the SSIM map of
`canvaslab.eval.metrics.pixels`, 7x7 Gaussian, averaged over the hole pixels) against the true
background; warping error (`canvaslab.video.quality.warping_error`: mean |out[t](p) - out[t+1](p + true
motion)| over the hole, in 0-255 levels; the truth scores 0); seconds (wall clock, after a warm-up
run, frames written as PNG). "time x" is the method's seconds over per-frame's.

speed: a synthetic clip of 854x480 (480p) at 25 fps, `--seconds` long (default 5 and 10), written as
H.264 .mp4 with its masks as a lossless .mkv mask video, then `canvaslab.video.inpaint(clip, masks,
out.mp4)` with default settings in a fresh process per length: wall and CPU seconds (user + system),
frames per second, and the process's peak resident memory (ru_maxrss). Memory should not grow with the clip's length (a window of
frames is held at a time).

strip: a before/after picture for docs/video.md: five frames of the coffee clip at 320x192, the input
(object and the mask's outline) above the propagated result, below that per-frame PatchMatch.

Everything runs on the CPU; on a shared 2-core machine wall times move with the load (`uptime`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CLIPS = (("coffee.png", "chelsea.png"), ("rocket.jpg", "chelsea.png"), ("chelsea.png", "coffee.png"))
METHODS = {
    "propagate": {},
    "per-frame": {"method": "per-frame", "temporal_blend": 0.0},
    "per-frame+blend": {"method": "per-frame", "temporal_blend": 0.5},
}


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB"))


def make_clip(background: str, thing: str, size: tuple[int, int], frames: int):
    from canvaslab.video.synthetic import synthetic_clip

    return synthetic_clip(photo(background), photo(thing), frames=frames, size=size)


def read_frames(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def hole_ssim(results, truth, masks) -> float:
    from canvaslab.eval.metrics.pixels import ssim_map

    total = count = 0.0
    for result, true, mask in zip(results, truth, masks):
        total += float(ssim_map(result, true)[mask].sum())
        count += int(mask.sum()) * 3
    return total / max(count, 1)


def run_method(clip, params: dict, folder: Path) -> tuple[list[np.ndarray], float]:
    from canvaslab.video import inpaint

    started = time.perf_counter()
    inpaint(clip.frames, clip.masks, folder, seed=1, **params)
    return read_frames(folder), time.perf_counter() - started


# -- quality ------------------------------------------------------------------------------------


def quality(size: tuple[int, int], frames: int) -> dict:
    from canvaslab.video.quality import hole_psnr, pan_flows, warping_error

    rows: dict[str, dict[str, list[float]]] = {m: {"psnr": [], "ssim": [], "warp": [], "seconds": []} for m in METHODS}
    with tempfile.TemporaryDirectory() as scratch:
        warm = make_clip(*CLIPS[0], (64, 48), 4)  # numba compiles PatchMatch on its first call
        for name, params in METHODS.items():
            run_method(warm, params, Path(scratch) / f"warm-{name}")
        for background, thing in CLIPS:
            clip = make_clip(background, thing, size, frames)
            flows = pan_flows(clip.frames[0].shape[:2], frames, clip.pan)
            for name, params in METHODS.items():
                out, seconds = run_method(clip, params, Path(scratch) / f"{background}-{name}")
                rows[name]["psnr"].append(hole_psnr(out, clip.truth, clip.masks))
                rows[name]["ssim"].append(hole_ssim(out, clip.truth, clip.masks))
                rows[name]["warp"].append(warping_error(out, clip.masks, flows))
                rows[name]["seconds"].append(seconds)
                print(f"  {background:12s} {name:16s} PSNR {rows[name]['psnr'][-1]:5.2f}  SSIM {rows[name]['ssim'][-1]:.3f}  "
                      f"warp {rows[name]['warp'][-1]:5.2f}  {seconds:5.1f} s", file=sys.stderr)
    base = sum(rows["per-frame"]["seconds"])
    summary = {name: {key: float(np.mean(values)) for key, values in row.items()} | {"time_x": sum(row["seconds"]) / base}
               for name, row in rows.items()}
    print(f"\n{len(CLIPS)} clips of {frames} frames at {size[0]}x{size[1]}, means:\n")
    print("| method | hole PSNR (dB) | hole SSIM | warping error | s / clip | time x |")
    print("|---|---|---|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['warp']:.2f} | {row['seconds']:.1f} | {row['time_x']:.2f} |")
    return summary


# -- speed and memory ---------------------------------------------------------------------------


def write_long_clip(folder: Path, size: tuple[int, int], seconds: int) -> tuple[Path, Path]:
    """The clip as H.264 and its masks as a lossless mask video (made here, not in the measured process)."""
    import av

    clip = make_clip("coffee.png", "chelsea.png", size, 25 * seconds)
    paths = folder / f"clip-{seconds}s.mp4", folder / f"masks-{seconds}s.mkv"
    for path, frames, codec, pix_fmt in ((paths[0], clip.frames, "libx264", "yuv420p"),
                                         (paths[1], clip.masks, "ffv1", "gray")):
        with av.open(str(path), "w") as out:
            stream = out.add_stream(codec, rate=25)
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
            if codec == "libx264":
                stream.options = {"crf": "18"}
            for frame in frames:
                if frame.dtype == bool:
                    picture = av.VideoFrame.from_ndarray(frame.astype(np.uint8) * 255, format="gray")
                else:
                    picture = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format=pix_fmt)
                for packet in stream.encode(picture):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
    return paths


def measured_run(clip: str, masks: str, output: str) -> None:
    """In its own process: one inpaint, then seconds, frames and peak memory as JSON on stdout."""
    from canvaslab.video import inpaint

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = inpaint(clip, masks, output, seed=1)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"frames": result.frames, "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "key_frames": len(result.key_frames), "peak_mb": usage.ru_maxrss / 1024, "import_mb": base / 1024}))


def speed(size: tuple[int, int], lengths: list[int]) -> list[dict]:
    rows, load = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        for seconds in lengths:
            maker = subprocess.run([sys.executable, __file__, "_write", str(seconds), f"{size[0]}x{size[1]}", scratch],
                                   capture_output=True, text=True, check=True)
            clip, masks = maker.stdout.split()
            run = subprocess.run([sys.executable, __file__, "_run", clip, masks, str(Path(scratch) / f"out-{seconds}.mp4")],
                                 capture_output=True, text=True, check=False)
            if run.returncode:
                raise SystemExit(run.stderr)
            row = json.loads(run.stdout.splitlines()[-1]) | {"clip_seconds": seconds}
            rows.append(row)
            print(f"  {seconds} s: {row}", file=sys.stderr)
    print(f"\n{size[0]}x{size[1]} at 25 fps, default settings (propagate, window 24, context 12, flow at 512 px):\n")
    print(f"load average: {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores\n")
    print("| clip | frames | wall s | CPU s | frames/s (wall) | key frames | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clip_seconds']} s | {row['frames']} | {row['seconds']:.0f} | {row['cpu_seconds']:.0f} | "
              f"{row['frames'] / row['seconds']:.2f} | {row['key_frames']} | {row['peak_mb']:.0f} |")
    return rows


# -- the picture --------------------------------------------------------------------------------


def strip(path: Path) -> None:
    from canvaslab.core.mask import grow

    clip = make_clip("coffee.png", "chelsea.png", (320, 192), 24)
    picks = [0, 6, 12, 18, 23]
    with tempfile.TemporaryDirectory() as scratch:
        propagated, _ = run_method(clip, METHODS["propagate"], Path(scratch) / "p")
        per_frame, _ = run_method(clip, METHODS["per-frame"], Path(scratch) / "f")
    rows = []
    for label, frames in (("input", clip.frames), ("propagate", propagated), ("per-frame patchmatch", per_frame)):
        tiles = []
        for t in picks:
            tile = frames[t].copy()
            if label == "input":  # the mask's outline in white
                outline = grow(clip.masks[t], 1) & ~clip.masks[t]
                tile[outline] = 255
            tiles.append(tile)
        row = np.concatenate([np.pad(t, ((0, 0), (2, 2), (0, 0)), constant_values=255) for t in tiles], axis=1)
        rows.append((label, row))
    label_h = 18
    width = rows[0][1].shape[1]
    canvas = Image.new("RGB", (width, sum(r.shape[0] + label_h for _, r in rows)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, row in rows:
        draw.text((4, y + 3), f"{label} (frames {', '.join(map(str, picks))})", fill="black")
        canvas.paste(Image.fromarray(row), (0, y + label_h))
        y += row.shape[0] + label_h
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    print(path)


def _size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_write":  # helpers of `speed`, in their own processes
        seconds, size, folder = int(sys.argv[2]), _size(sys.argv[3]), Path(sys.argv[4])
        print(*write_long_clip(folder, size, seconds))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        measured_run(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality", help="propagation vs per-frame PatchMatch on synthetic clips with a known background")
    q.add_argument("--size", type=_size, default=(320, 192))
    q.add_argument("--frames", type=int, default=24)
    s = sub.add_parser("speed", help="seconds and peak memory on a long 480p clip, at two lengths")
    s.add_argument("--size", type=_size, default=(854, 480))
    s.add_argument("--seconds", default="5,10", help="clip lengths in seconds, comma-separated")
    p = sub.add_parser("strip", help="the before/after picture of docs/video.md")
    p.add_argument("path", type=Path)
    args = parser.parse_args()
    if args.what == "quality":
        quality(args.size, args.frames)
    elif args.what == "speed":
        speed(args.size, [int(x) for x in args.seconds.split(",")])
    else:
        strip(args.path)


if __name__ == "__main__":
    main()
