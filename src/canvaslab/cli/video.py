"""`canvaslab video inpaint` (remove an object from a clip) and `canvaslab video track` (carry masks drawn on
key frames to every frame). Flags come from `VideoInpaintRequest` / `TrackRequest` like every task's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from canvaslab.cli import console
from canvaslab.cli.options import command
from canvaslab.cli.paint import MaxPixelsOpt, MetadataOpt
from canvaslab.core.image import DEFAULT_MAX_PIXELS
from canvaslab.tasks.requests import build_request
from canvaslab.tasks.result import MetadataMode
from canvaslab.video.requests import TrackRequest, VideoInpaintRequest

app = typer.Typer(
    help="Video: remove objects from clips (inpaint) and carry masks from key frames to every frame (track).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

# Request fields video refuses (frames do not wrap around; propagation fills whole pixels): no flags for them.
NOT_FOR_VIDEO = ("soft", "tiling")
ClipArg = Annotated[Path, typer.Argument(help="video file (mp4, mov, webm, mkv, gif, avi) or folder of frames", show_default=False)]


def _inpaint_inputs(
    clip: ClipArg,
    mask: Annotated[Path, typer.Option("--mask", "-m", help="one mask image for every frame, a folder of masks named like the frames (000012.png or 12.png for frame 12 of a video file), or a mask video; white = fill (see --mask-mode)", rich_help_panel="Input", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="video file (.mp4/.m4v/.mov H.264, .webm VP9, .mkv lossless FFV1, .gif) or a folder for PNG frames", rich_help_panel="Output", show_default=False)],
    crf: Annotated[int, typer.Option("--crf", min=0, max=51, help="H.264/VP9 quality: lower is better and bigger (18: visually lossless)", rich_help_panel="Output")] = 18,
    metadata: MetadataOpt = MetadataMode.full,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Remove what the masks cover from every frame of a clip.

    By default each hole is filled with what the neighbouring frames show there, followed by optical flow,
    and only what no frame ever shows is painted by the image engine (--engine, patchmatch by default), on
    key frames, and carried from there. Frame rate, frame count, size, colour range and audio are kept.
    Finished frames are kept beside the output: run the same command again after an interruption to go on.

    Examples:

      canvaslab video inpaint clip.mp4 --mask person.png --grow 4 -o clean.mp4

      canvaslab video inpaint frames/ --mask masks/ -o clean-frames/ --fps 30

      canvaslab video inpaint clip.mp4 --mask first-frame.png --track -o clean.mkv --start 50 --end 200
    """


def _run_inpaint(values: dict[str, Any], **cli: Any) -> None:
    from canvaslab.video.inpainting import inpaint

    with console.friendly_errors():
        request = build_request(VideoInpaintRequest, values)
        try:
            with _frames_bar("filling") as advance:
                result = inpaint(cli["clip"], cli["mask"], cli["output"], request=request, crf=cli["crf"],
                                 metadata=cli["metadata"], max_pixels=cli["max_pixels"], on_frame=advance)
        except KeyboardInterrupt:
            console.error_line("interrupted; finished frames are kept: run the same command again to go on")
            raise typer.Exit(130) from None
        drifting = result.track.drifting if result.track is not None else []
        if console.settings.json:
            console.emit_json({
                "output": str(result.path), "frames": result.frames, "fps": float(result.fps),
                "size": list(result.size), "seed": result.seed, "key_frames": result.key_frames,
                "resumed": result.resumed, "drifting": drifting, "notices": result.notices,
                "seconds": round(result.seconds, 3),
            })
            return
        print(result.path)
        console.info(f"[dim]video inpaint {cli['clip']} -> {result.path} ({result.frames} frames, the engine painted "
                     f"{len(result.key_frames)}, seed {result.seed}, {result.seconds:.1f} s)[/]")


def _track_inputs(
    clip: ClipArg,
    mask: Annotated[Path, typer.Option("--mask", "-m", help="key masks: one image (the first frame's) or a folder of masks named like the frames they belong to", rich_help_panel="Input", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="new folder for the masks of every frame (PNG, white = fill) and track.json", rich_help_panel="Output", show_default=False)],
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Carry masks drawn on key frames to every frame of a clip, by the optical flow.

    Each mask moves with the object from its key frame on, until the next key frame. Frames where the
    tracked mask drifts (its motion unreliable, or its size far from the key frame's) are named on stderr
    and marked in track.json: correct those masks (or add key masks there) and give the folder to
    `video inpaint --mask`.

    Examples:

      canvaslab video track clip.mp4 --mask first-frame.png -o masks/

      canvaslab video track clip.mp4 --mask keys/ -o masks/ --start 100
    """


def _run_track(values: dict[str, Any], **cli: Any) -> None:
    from canvaslab.video.tracking import track

    with console.friendly_errors():
        request = build_request(TrackRequest, values)  # type: ignore[arg-type]
        with _frames_bar("tracking") as advance:
            result = track(cli["clip"], cli["mask"], cli["output"], request=request,  # type: ignore[arg-type]
                           max_pixels=cli["max_pixels"], on_frame=advance)
        report = result.report
        if console.settings.json:
            console.emit_json({"output": str(result.folder), "frames": len(report.frames), "keys": report.keys,
                               "drifting": report.drifting, "seconds": round(result.seconds, 3)})
            return
        print(result.folder)
        drift = f", drifting at frames {_ranges(report.drifting)}" if report.drifting else ", no drift"
        console.info(f"[dim]video track {cli['clip']} -> {result.folder} ({len(report.frames)} frames from key frames "
                     f"{_ranges(report.keys)}{drift}, {result.seconds:.1f} s)[/]")


def _ranges(indices: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@contextmanager
def _frames_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over frames with ETA on stderr, silent with --quiet or --json. It appears with the
    first frame count, so an input refused before any work prints only its error."""
    bar = Progress(
        TextColumn(f"[progress.description]{what}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console.err, transient=False,
        disable=console.settings.quiet or console.settings.json,
    )
    task = bar.add_task(what, total=None)

    def advance(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield advance
    except BaseException:
        # a failed run's half-drawn bar would sit above its one-line error: a terminal erases it (transient),
        # a file or pipe gets nothing at all (not even the empty line a transient stop leaves there)
        bar.live.transient = True
        if bar.live.is_started:
            quiet, console.err.quiet = console.err.quiet, not console.err.is_terminal or console.err.quiet
            try:
                bar.stop()
            finally:
                console.err.quiet = quiet
        raise
    finally:
        if bar.live.is_started:  # stopping a bar never shown would print an empty line above an error
            bar.stop()


app.command("inpaint")(command(VideoInpaintRequest, [_inpaint_inputs], _run_inpaint, exclude=NOT_FOR_VIDEO))
app.command("track")(command(TrackRequest, [_track_inputs], _run_track))  # type: ignore[arg-type]
