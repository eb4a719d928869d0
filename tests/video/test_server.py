"""POST /api/v1/video/inpaint against a live server: a job with frame progress whose result video downloads and
keeps the clip's frames, rate, size and audio; every way a client could make it do too much refused before queueing."""

from __future__ import annotations

import gc
import io
import json
import threading
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from canvaslab.server.settings import ServerSettings
from tests.server.conftest import start_server, wait_done
from tests.server.test_native import read_events

from .clips import read_video, write_video

ROUTE = "/api/v1/video/inpaint"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def uploads(clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    union = np.logical_or.reduce(clip.masks)
    return {
        "clip": write_video(folder / "in.mp4", clip.frames, fps=24, audio=True).read_bytes(),
        "mask": _png(union.astype(np.uint8) * 255),
        "mask_video": write_video(folder / "masks.mkv", [np.repeat(m[..., None], 3, 2).astype(np.uint8) * 255
                                                         for m in clip.masks]).read_bytes(),
        "union": union,
        "decoded": read_video(folder / "in.mp4")["frames"],
        "folder": folder,
    }


@pytest.fixture
def make_server(tmp_path):
    """Servers with the given settings (output under tmp_path), all stopped after the test."""
    started = []

    def make(**fields):
        started.append(start_server(ServerSettings(output=tmp_path / "out", **fields)))
        return started[-1]

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = start_server(ServerSettings(output=tmp_path_factory.mktemp("served")))
    yield server
    server.stop()


def _post(client, uploads, fields=None, *, clip=None, mask=None, **extra):
    files = {"clip": ("clip.mp4", uploads["clip"] if clip is None else clip),
             "mask": ("mask.png", uploads["mask"] if mask is None else mask)}
    return client.post(ROUTE, files=files, data={"request": json.dumps(fields or {}), **extra})


def _download(client, job, folder, name):
    url = job["result"]["images"][0]["url"]
    answer = client.get(url)
    assert answer.status_code == 200
    path = folder / name
    path.write_bytes(answer.content)
    return answer.headers["content-type"], read_video(path)


def test_a_job_with_progress_whose_video_downloads(live, uploads, tmp_path):
    with live.client() as client:
        submitted = _post(client, uploads, {"seed": 4, "format": "mkv"})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        events: list = []
        reader = threading.Thread(target=lambda: events.extend(read_events(live.client(), job_id)))
        reader.start()
        job = wait_done(client, job_id)
        reader.join(30)
        assert job["status"] == "done", job["error"]
        steps = [e[1]["step"] for e in events if e[0] == "progress"]
        assert steps and steps == sorted(steps) and ("progress", {"step": 12, "total": 12}) in events
        assert job["progress"] == {"step": 12, "total": 12}
        assert job["result"]["recipe"]["task"] == "video-inpaint" and job["result"]["recipe"]["request"]["seed"] == 4
        assert "output" not in job["result"]["recipe"]  # no PNG quality for a video
        assert job["result"]["recipe"]["inputs"]["clip"]["path"] is None  # private by default: no server paths
        media, video = _download(client, job, tmp_path, "out.mkv")
    assert media == "video/x-matroska"
    assert (len(video["frames"]), video["fps"], video["size"]) == (12, Fraction(24), (96, 64))
    assert video["audio"]["codec"] == "aac"
    union = uploads["union"]
    for out, original in zip(video["frames"], uploads["decoded"]):
        assert np.array_equal(out[~union], original[~union])  # lossless: every unmasked pixel
        assert not np.array_equal(out[union], original[union])


def test_mp4_with_a_mask_video_and_a_range(live, uploads, tmp_path):
    with live.client() as client:
        submitted = _post(client, uploads, {"seed": 1, "start": 2, "end": 8}, mask=uploads["mask_video"])
        assert submitted.status_code == 202, submitted.text
        job = wait_done(client, submitted.json()["id"])
        assert job["status"] == "done", job["error"]
        media, video = _download(client, job, tmp_path, "out.mp4")
    assert media == "video/mp4" and video["codec"] == "h264" and len(video["frames"]) == 6
    union = uploads["union"]
    for out, original in zip(video["frames"], uploads["decoded"][2:8]):
        diff = out[~union].astype(float) - original[~union].astype(float)
        assert 10 * np.log10(255**2 / max((diff**2).mean(), 1e-9)) > 33  # within H.264's error at crf 18


def _post_frames(client, frames, mask_part, fields=None, **files):
    parts = [("frame", (f"{i:03d}.png", data)) for i, data in enumerate(frames)] + [("mask", ("mask.png", mask_part))]
    parts += [(name, (name, data)) for name, data in files.items()]
    return client.post(ROUTE, files=parts, data={"request": json.dumps(fields or {})})


def test_frames_sent_as_images(live, uploads, clip, tmp_path):
    frames = [_png(frame) for frame in clip.frames]
    with live.client() as client:
        submitted = _post_frames(client, frames, uploads["mask"], {"seed": 2, "fps": 12, "format": "mkv"})
        assert submitted.status_code == 202, submitted.text
        job = wait_done(client, submitted.json()["id"])
        assert job["status"] == "done", job["error"]
        assert job["progress"] == {"step": 12, "total": 12}
        _, video = _download(client, job, tmp_path, "out.mkv")
    assert (len(video["frames"]), video["fps"], video["size"]) == (12, Fraction(12), (96, 64))
    union = uploads["union"]
    for out, original in zip(video["frames"], clip.frames):  # the frames as sent, bit for bit outside the mask
        assert np.array_equal(out[~union], original[~union])
        assert not np.array_equal(out[union], original[union])


def test_bad_frame_parts(live, uploads, clip):
    frames = [_png(frame) for frame in clip.frames[:4]]
    with live.client() as client:
        other_size = _post_frames(client, [*frames, _png(clip.frames[4][:32])], uploads["mask"])
        assert other_size.status_code == 400 and other_size.json()["field"] == "frame"
        assert "frame part 4 is 96x32, not 96x64" in other_size.json()["error"]
        junk = _post_frames(client, [*frames, b"GIF89a no"], uploads["mask"])
        assert junk.status_code == 400 and "frame part 4 is not an image" in junk.json()["error"]
        both = _post_frames(client, frames, uploads["mask"], clip=uploads["clip"])
        assert both.status_code == 400 and "not both" in both.json()["error"]
        twice = _post_frames(client, frames, uploads["mask"], mask=uploads["mask"])
        assert twice.status_code == 400 and twice.json()["field"] == "mask"


def test_notices_name_the_parts_not_the_servers_folders(live, uploads):
    with live.client() as client:
        small_mask = _png(np.asarray(Image.fromarray(uploads["union"].astype(np.uint8) * 255).resize((48, 32))))
        answer = _post(client, uploads, {"seed": 1, "start": 0, "end": 3}, mask=small_mask)
        assert answer.status_code == 202, answer.text
        job = wait_done(client, answer.json()["id"])
    assert job["status"] == "done", job["error"]
    notices = live.app.state.queue.get(job["id"]).notices  # what the job keeps (the server's log has the paths)
    resized = [n for n in notices if "resized" in n]
    assert resized and all(str(live.settings.output) not in n for n in resized), notices
    assert resized[0].startswith("mask the mask is 48x32"), resized


@pytest.mark.parametrize("fields, extra, status, field, message", [
    ({"format": "avi"}, {}, 422, "format", "format must be one of"),
    ({"crf": 80}, {}, 422, "crf", "crf must be a whole number"),
    ({"fps": 30}, {}, 400, "fps", "keeps its own frame rate"),  # fps is for frames sent as images
    ({"tiling": "x"}, {}, 422, None, "--tiling does not apply to video"),
    ({"sneaky": 1}, {}, 422, "sneaky", None),
    ({"frames": "/etc"}, {}, 400, "frames", "clients cannot set"),
    ({"end": 40}, {}, 400, None, "past the clip's end"),
    ({"window": 1000, "context": 1000}, {}, None, None, None),  # fine here: 12 frames are held at most
    ([1, 2], {}, 400, "request", "must be a JSON object"),
])
def test_bad_fields_are_one_line(live, uploads, fields, extra, status, field, message):
    with live.client() as client:
        answer = _post(client, uploads, fields, **extra)
        if status is None:
            assert answer.status_code == 202
            wait_done(client, answer.json()["id"])
            return
        body = answer.json()
    assert answer.status_code == status, body
    assert "\n" not in body["error"]
    if field:
        assert body.get("field") == field, body
    if message:
        assert message in body["error"], body


def test_bad_uploads_are_refused(live, uploads):
    with live.client() as client:
        assert client.post(ROUTE, json={"seed": 1}).status_code == 415
        no_clip = client.post(ROUTE, files={"mask": ("m.png", uploads["mask"])}, data={"request": "{}"})
        assert no_clip.status_code == 400 and no_clip.json()["field"] == "clip"
        junk = _post(client, uploads, clip=b"not a video at all" * 20)
        assert junk.status_code == 400 and "the clip" in junk.json()["error"] and "/" not in junk.json()["error"]
        junk_mask = _post(client, uploads, mask=b"neither an image nor a video" * 10)
        assert junk_mask.status_code == 400 and junk_mask.json()["field"] == "mask"
        assert "the mask" in junk_mask.json()["error"] and "/" not in junk_mask.json()["error"]
        extra_part = client.post(ROUTE, files={"clip": ("c", uploads["clip"]), "mask": ("m", uploads["mask"]),
                                               "other": ("o", b"x")}, data={"request": "{}"})
        assert extra_part.status_code == 400 and extra_part.json()["field"] == "other"


def test_limits_hold_before_queueing(make_server, uploads, clip):
    folder = uploads["folder"]
    # upload size: the whole body, before anything is parsed
    small = make_server(max_upload_mb=0.005)
    with small.client() as client:
        answer = _post(client, uploads)
        assert answer.status_code == 413 and "\n" not in answer.json()["error"]
    # pixels a frame: 96x64 = 6144 over 4096
    tight = make_server(max_pixels=4096)
    with tight.client() as client:
        answer = _post(client, uploads)
        assert answer.status_code == 400 and "over the limit of 4,096" in answer.json()["error"]
    # frames x pixels: 200 frames of 96x64 over 128 frames at the limit of 8192
    many = write_video(folder / "many.mkv", [clip.frames[i % 12] for i in range(200)])
    budget = make_server(max_pixels=8192)
    with budget.client() as client:
        answer = _post(client, uploads, clip=many.read_bytes())
        assert answer.status_code == 400 and "over what one job may process" in answer.json()["error"]
        # ...a range of them is fine to ask for: the budget counts the frames processed
        ranged = _post(client, uploads, {"end": 12}, clip=many.read_bytes())
        assert ranged.status_code == 202, ranged.text
        assert wait_done(client, ranged.json()["id"])["status"] == "done"
        # frames held at once: 100 frames in one window, over 48 frames at the pixel limit (64 of these)
        answer = _post(client, uploads, {"end": 100, "window": 100, "context": 0}, clip=many.read_bytes())
        assert answer.status_code == 400 and answer.json()["field"] == "window"
        # duration by the header: 3 frames at 1/400 fps run 1200 s
        slow = write_video(folder / "slow.mkv", clip.frames[:3], fps=Fraction(1, 400))
        answer = _post(client, uploads, clip=slow.read_bytes())
        assert answer.status_code == 400 and "1,200.0 s" in answer.json()["error"]


def test_a_job_over_the_time_limit_stops_at_a_frame(make_server, uploads):
    server = make_server(max_job_seconds=0.2)
    with server.client() as client:
        answer = _post(client, uploads, {"method": "per-frame", "seed": 1})
        job = wait_done(client, answer.json()["id"])
    assert job["status"] == "failed" and "longer than the server's limit" in job["error"]
    assert not list(server.settings.output.glob(".video-*"))  # the job's scratch folder is gone


def test_queued_jobs_hold_their_uploads_on_disk_and_cancelling_removes_them(make_server, uploads):
    server = make_server()
    with server.client() as client:
        running = _post(client, uploads, {"method": "per-frame", "seed": 1}).json()["id"]
        queued = _post(client, uploads, {"seed": 1}).json()["id"]
        assert 1 <= len(list(server.settings.output.glob(".video-*"))) <= 2
        assert client.post(f"/api/v1/jobs/{queued}/cancel").status_code == 200
        assert wait_done(client, queued)["status"] == "cancelled"
        assert wait_done(client, running)["status"] == "done"
    gc.collect()
    assert not list(server.settings.output.glob(".video-*"))  # the job that never ran left nothing either


def test_a_starting_server_removes_scratch_folders_of_servers_that_died(tmp_path):
    import os
    import subprocess
    import sys

    from canvaslab.server.app import create_app

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    output = tmp_path / "out"
    left = output / f".video-{dead.stdout.strip()}-{'a' * 32}"  # a server killed mid-job left its frames
    (left / "work").mkdir(parents=True)
    (left / "work" / "000001.png").write_bytes(b"x")
    live = output / f".video-{os.getpid()}-{'b' * 32}"  # a running server sharing the folder: its job goes on
    live.mkdir()
    other = output / ".video-notes"  # not a scratch folder of ours
    other.mkdir()
    create_app(ServerSettings(output=output)).state.queue.stop()
    assert not left.exists() and live.is_dir() and other.is_dir()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a few bytes of data: a decompression bomb's opening."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1) * 4))
            + chunk(b"IEND", b""))


def test_decompression_bombs_are_refused_by_their_headers(live, uploads, clip):
    """A mask (image or GIF) or a frame whose header claims billions of pixels is a 400 naming its part, not a
    500 from Pillow's bomb check; nothing is decoded."""
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, "GIF", save_all=True, append_images=[Image.new("L", (8, 8), 255)])
    huge_gif = bytearray(gif.getvalue())
    huge_gif[6:10] = (65535).to_bytes(2, "little") * 2  # the logical screen: 65535 x 65535
    frames = [_png(frame) for frame in clip.frames[:2]]
    with live.client() as client:
        for mask in (_png_header(100_000, 100_000), bytes(huge_gif), _png_header(3000, 3000)):
            answer = _post(client, uploads, mask=mask)
            assert answer.status_code == 400 and answer.json()["field"] == "mask", answer.text
            assert "pixel" in answer.json()["error"] and "\n" not in answer.json()["error"]
        bomb = _post_frames(client, [*frames, _png_header(100_000, 100_000)], uploads["mask"])
        assert bomb.status_code == 400 and bomb.json()["field"] == "frame", bomb.text
        assert "frame part 2 claims far more pixels" in bomb.json()["error"]


def test_a_job_refused_by_a_full_queue_leaves_no_folder(make_server, uploads):
    """The refused job's uploads were written to its scratch folder, which stayed until the garbage collector met
    the finalizer (the refusal's traceback held the work): a client hammering a full queue filled the disk."""
    server = make_server(queue_size=1)
    gc.disable()  # what the collector would clean up some time later is not cleaned up here
    try:
        with server.client() as client:
            running = _post(client, uploads, {"method": "per-frame", "seed": 1}).json()["id"]
            queued = _post(client, uploads, {"seed": 1}).json()["id"]
            before = set(server.settings.output.glob(".video-*"))
            refused = _post(client, uploads, {"seed": 1})
            assert refused.status_code == 429
            assert set(server.settings.output.glob(".video-*")) <= before  # nothing left by the refused job
            assert client.post(f"/api/v1/jobs/{queued}/cancel").status_code == 200
            wait_done(client, running)
    finally:
        gc.enable()


@pytest.mark.parametrize("fields, field", [
    ({"engine": "diffusion", "control": [{"model": "/srv/any/controlnet", "image": "/etc/hosts"}]}, "control.0.model"),
    ({"engine": "diffusion", "ip_adapter": [{"model": "/srv/x/ip.bin", "images": ["/etc/passwd"]}]}, "ip_adapter.0.model"),
    ({"control": [{"model": "x"}] * 9}, "control"),
])
def test_control_units_name_the_servers_models_never_paths(live, uploads, fields, field):
    """The video job took `control` / `ip_adapter` as the CLI does: a ControlNet by any server path and control or
    reference images read from the server's files (a job with a private PNG as its control image finished)."""
    with live.client() as client:
        answer = _post(client, uploads, fields)
    assert answer.status_code == 400 and answer.json()["field"] == field, answer.text


def test_a_frame_rate_the_encoder_cannot_hold_is_refused(live, uploads, clip):
    """fps 1e-7 passed the request model (> 0) and every job with it failed as an internal error (the rate, as a
    fraction of denominator <= 1001, is 0: ZeroDivisionError)."""
    frames = [_png(frame) for frame in clip.frames[:2]]
    with live.client() as client:
        answer = _post_frames(client, frames, uploads["mask"], {"fps": 1e-7})
    assert answer.status_code == 422 and answer.json()["field"] == "fps", answer.text
