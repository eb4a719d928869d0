"""The server against hostile clients (issue 10): tokens, derived sizes, cost budgets, field sizes,
malformed bodies, models, slow clients, logs, OPTIONS/websocket scopes and engine options.

Every test drives a live server on loopback (or, for websocket scopes, the ASGI app itself) and
checks what a client sees: the status, the one-line error and its field, and that nothing was queued.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest

from canvaslab.errors import InputError
from canvaslab.server.settings import ServerSettings

from .conftest import b64, free_port, png_bytes, wait_done
from .test_native import gate_job, inpaint_body

STRONG = "a-strong-token-0123456789"


def assert_refused(reply, status: int, field: str | None, message: str) -> None:  # type: ignore[no-untyped-def]
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert message in body["error"] and "\n" not in body["error"], body
    if field is not None:
        assert body.get("field") == field, body


def nothing_queued(client) -> bool:  # type: ignore[no-untyped-def]
    return client.get("/api/v1/jobs").json()["jobs"] == []


# -- 1. tokens -----------------------------------------------------------------------------------


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "CANVASLAB_TOKEN"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "canvaslab", "serve", "--host", "0.0.0.0", "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=30, env=environment)


@pytest.mark.parametrize("token", [" ", "\t", "\n", " \t\n ", "short-token", "a token with spaces in it", "tøken-with-ünicode-0123"])
def test_blank_short_or_unsendable_tokens_are_refused(token):
    with pytest.raises(InputError, match="token"):
        ServerSettings(token=token)
    for args, env in ((("--token", token), None), ((), {"CANVASLAB_TOKEN": token})):
        result = run_serve(*args, env=env)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and "token" in lines[0], (token, result.stderr)


def test_a_strong_token_is_accepted():
    assert ServerSettings(token=STRONG).token == STRONG
    assert ServerSettings(token="Zm9vYmFy+/Zm9vYmFyYmF6=").token  # base64 alphabet


# -- 2. every derived working size is checked before queueing -------------------------------------


@pytest.mark.parametrize("task,extra,field,message", [
    ("inpaint", {"size": 8192}, "size", "8192x6144"),
    ("inpaint", {"size": 8192, "area": "masked"}, "size", "pixels"),
    ("inpaint", {"multiple": 1024}, "multiple", "1024x1024"),
    ("outpaint", {"expand": 8, "direction": ["left", "right"]}, "expand", "1088x48"),
    ("outpaint", {"expand": 1, "sequence": ["left", "left", "up", "up"]}, "expand", "192x144"),
    ("outpaint", {"right": 16, "size": 4096}, "size", "pixels"),
])
def test_every_working_size_is_checked_before_queueing(make_server, photo_png, mask_png, task, extra, field, message):
    live = make_server(max_pixels=128 * 96)
    body = {"image": b64(photo_png), "engine": "telea", **extra}
    if task == "inpaint":
        body["mask"] = b64(mask_png)
    with live.client() as client:
        assert_refused(client.post(f"/api/v1/{task}", json=body), 400, field, message)
        assert "limit" in client.post(f"/api/v1/{task}", json=body).json()["error"]
        assert nothing_queued(client)


def test_tile_windows_are_bounded(make_server):
    live = make_server()
    image = png_bytes(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8))
    mask = np.zeros((512, 512), np.uint8)
    mask[6:506, 6:506] = 255
    body = {"image": b64(image), "mask": b64(png_bytes(mask)), "engine": "telea"}
    with live.client() as client:
        assert_refused(client.post("/api/v1/inpaint", json={**body, "tile": 16}), 400, "tile", "windows")
        assert_refused(client.post("/api/v1/outpaint", json={"image": b64(image), "engine": "telea", "right": 64,
                                                              "tile": 8}), 400, "tile", "windows")
        assert nothing_queued(client)
        assert client.post("/api/v1/inpaint", json={**body, "tile": 256}).status_code == 202


def test_model_sizes_are_checked_before_queueing(make_server, photo_png, mask_png, tmp_path):
    """Checked without loading the model: A1111 only-masked width/height, edit's multiple, generate's size."""
    model = tmp_path / "configured-model"
    model.mkdir()
    live = make_server(engine="diffusion", models=[str(model)], max_pixels=512 * 512)
    body = {"init_images": [b64(photo_png)], "mask": b64(mask_png), "inpaint_full_res": True, "width": 4096,
            "height": 4096}
    with live.client() as client:
        assert_refused(client.post("/sdapi/v1/img2img", json=body), 400, "width", "limit")
        edit = {"image": b64(photo_png), "instruction": "winter", "model": "configured-model", "multiple": 1024}
        assert_refused(client.post("/api/v1/edit", json=edit), 400, "multiple", "1024x1024")
        assert_refused(client.post("/api/v1/generate", json={"prompt": "x", "size": 1024}), 400, "size", "1024x1024")
        assert nothing_queued(client)


# -- 3. what a job may cost ----------------------------------------------------------------------


def test_server_defaults_bound_the_cost_of_a_job(server, mask_png):
    settings = ServerSettings()
    assert settings.max_pixels == 2048 * 2048 and 0 < settings.max_job_seconds <= 600
    big = png_bytes(np.zeros((2049, 2048, 3), np.uint8))  # a few KB that would decode to 12 MB
    with server.client() as client:
        body = {"image": b64(big), "mask": b64(png_bytes(np.zeros((2049, 2048), np.uint8))), "engine": "telea"}
        assert_refused(client.post("/api/v1/inpaint", json=body), 400, "image", "limit")


def test_a_job_over_its_time_budget_fails_and_frees_the_worker(make_server, photo_png, mask_png):
    live = make_server(max_job_seconds=0.5)
    with live.client() as client:
        gate, release = gate_job(live)  # never ends by itself; reports a step every 10 ms
        try:
            job = wait_done(client, gate.id, 10)
        finally:
            release.set()
        assert job["status"] == "failed" and "0.5" in job["error"] and "limit" in job["error"]
        after = client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png)).json()
        assert wait_done(client, after["id"])["status"] == "done"


# -- 4. field sizes and what the history keeps -----------------------------------------------------


@pytest.mark.parametrize("extra,field", [
    ({"prompt": "x" * 1_000_000}, "prompt"),
    ({"negative_prompt": "y" * 200_000}, "negative_prompt"),
    ({"lora": ["style.safetensors"] * 5000}, "lora"),
    ({"options": {f"key{i}": i for i in range(5000)}}, "options"),
    ({"options": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {}}}}}}}}}}}, "options"),
])
def test_oversized_fields_are_refused(server, photo_png, mask_png, extra, field):
    with server.client() as client:
        reply = client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png, **extra))
        assert_refused(reply, 400, field, field)
        assert len(reply.content) < 1000  # the answer does not echo the value back
        a1111 = client.post("/sdapi/v1/img2img", json={"init_images": [b64(photo_png)], "mask": b64(mask_png),
                                                       "prompt": "x" * 1_000_000})
        assert_refused(a1111, 400, "prompt", "prompt")
        assert nothing_queued(client)


def test_finished_jobs_keep_no_decoded_inputs(server):
    noise = png_bytes(np.random.default_rng(1).integers(0, 255, (384, 512, 3), dtype=np.uint8))  # 576 KB decoded
    mask = np.zeros((384, 512), np.uint8)
    mask[100:140, 200:260] = 255
    body = {"image": b64(noise), "mask": b64(png_bytes(mask)), "engine": "telea", "feather": 2}
    with server.client() as client:
        wait_done(client, client.post("/api/v1/inpaint", json=body).json()["id"])  # imports, caches
        gc.collect()
        tracemalloc.start()
        try:
            for _ in range(6):
                job = wait_done(client, client.post("/api/v1/inpaint", json=body).json()["id"])
                assert job["status"] == "done"
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert held < 1_000_000, f"six finished jobs hold {held:,} bytes"


# -- 5. malformed bodies are 400, never 500 --------------------------------------------------------

MALFORMED = [
    ("deep array", b"[" * 100_000 + b"]" * 100_000),
    ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("huge integer", b'{"seed": ' + b"9" * 5000 + b"}"),
    ("Infinity", b'{"seed": Infinity, "steps": 1}'),
    ("NaN", b'{"denoising_strength": NaN}'),
    ("overflowing float", b'{"denoising_strength": 1e999, "seed": -1e999}'),
    ("lone surrogate", b'{"prompt": "\\ud800"}'),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe"}'),
]
ROUTES = ["/api/v1/inpaint", "/api/v1/generate", "/sdapi/v1/img2img", "/sdapi/v1/txt2img", "/sdapi/v1/options",
          "/sdapi/v1/png-info"]


@pytest.mark.parametrize("name,raw", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_bodies_are_400(server, name, raw):
    with server.client() as client:
        for route in ROUTES:
            reply = client.post(route, content=raw, headers={"content-type": "application/json"})
            assert reply.status_code == 400, (route, reply.status_code, reply.text[:200])
            assert "\n" not in reply.json()["error"]
        form = client.post("/api/v1/inpaint", files={"request": ("request.json", raw, "application/json"),
                                                     "image": ("a.png", b"x", "image/png")})
        assert form.status_code == 400, form.text[:200]
        assert nothing_queued(client)


@pytest.mark.parametrize("field,value", [
    ("seed", "1e999"), ("denoising_strength", "inf"), ("width", "Infinity"), ("mask_blur", "nan"),
    ("batch_size", 1e308), ("inpainting_fill", "-inf"), ("n_iter", [1]), ("cfg_scale", {"a": 1}),
])
def test_a1111_numbers_that_are_not_numbers(server, photo_png, mask_png, field, value):
    body = {"init_images": [b64(photo_png)], "mask": b64(mask_png), "width": 64, "height": 48, field: value}
    with server.client() as client:
        reply = client.post("/sdapi/v1/img2img", json=body)
        assert 400 <= reply.status_code < 500 and reply.json()["field"] == field, reply.text
        assert nothing_queued(client)


@pytest.mark.parametrize("route,body,field", [
    ("/sdapi/v1/interrogate", {"model": {"a": {}}}, "model"),
    ("/sdapi/v1/extra-single-image", {"upscaler_1": [1]}, "upscaler_1"),
    ("/sdapi/v1/extra-single-image", {"upscaler_1": "Lanczos", "upscaler_2": {"a": {}}}, "upscaler_2"),
    ("/sdapi/v1/png-info", {"image": ""}, "image"),
])
def test_odd_values_in_a1111_fields_are_4xx(server, photo_png, route, body, field):
    """Found by fuzzing every route with odd values: each was a 500 that also reset the connection."""
    body = {"image": b64(photo_png), **body}
    with server.client() as client:
        reply = client.post(route, json=body)
        assert 400 <= reply.status_code < 500 and reply.json()["field"] == field, reply.text
        assert client.get("/api/v1/health").status_code == 200  # the same connection still works


def test_png_info_of_a_recipe_nested_100000_deep_ignores_the_recipe(server, photo_png):
    """Found by fuzzing: a PNG whose embedded recipe text is nested 100,000 deep was a 500 (RecursionError)."""
    end = photo_png.rfind(b"IEND") - 4
    text = b"canvaslab\x00" + b"[" * 100_000
    chunk = len(text).to_bytes(4, "big") + b"tEXt" + text + zlib.crc32(b"tEXt" + text).to_bytes(4, "big")
    with server.client() as client:
        reply = client.post("/sdapi/v1/png-info", json={"image": b64(photo_png[:end] + chunk + photo_png[end:])})
        assert reply.status_code == 200 and "canvaslab" not in reply.json()["items"], reply.text
        assert client.get("/api/v1/health").status_code == 200  # the same connection still works


# -- 6. only the server's own models --------------------------------------------------------------


def test_clients_cannot_make_the_server_download_models(server, photo_png, mask_png):
    with server.client() as client:
        assert_refused(client.post("/api/v1/generate", json={"prompt": "x", "model": "sd15", "size": 64}), 400, "model",
                       "unknown model 'sd15'")
        assert_refused(client.post("/api/v1/generate", json={"prompt": "x", "size": 64}), 400, "model", "model")
        assert_refused(client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png, engine="diffusion")), 400,
                       "model", "model")
        assert_refused(client.post("/api/v1/edit", json={"image": b64(photo_png), "instruction": "winter"}), 400, "model",
                       "model")
        assert client.get("/api/v1/models").json()["models"] == []
        assert client.get("/sdapi/v1/sd-models").json() == []
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd15-inpaint"}).status_code == 400
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64}).status_code == 400
        assert nothing_queued(client)


def test_allow_downloads_offers_the_built_in_aliases(make_server):
    live = make_server(allow_downloads=True)
    with live.client() as client:
        names = [m["name"] for m in client.get("/api/v1/models").json()["models"]]
        assert "sd15-inpaint" in names and "show-o" in names


# -- 7. slow clients -------------------------------------------------------------------------------


def open_socket(live) -> socket.socket:  # type: ignore[no-untyped-def]
    sock = socket.create_connection(("127.0.0.1", live.settings.port), timeout=10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def closed_by_server(sock: socket.socket, wait: float = 0.5) -> bool:
    """True when the server closed the connection (EOF), False when it is still open after `wait`."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_half_sent_headers_are_dropped(make_server):
    live = make_server(request_timeout=0.5)
    with open_socket(live) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        read_all(sock)
        assert time.monotonic() - started < 5  # the server closed it, the 10 s socket timeout did not


def test_slow_bodies_get_408(make_server):
    live = make_server(request_timeout=0.5)
    with open_socket(live) as sock:
        sock.sendall(b"POST /api/v1/inpaint HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"image\": ")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" not in answer and b"seconds" in answer


def test_half_sent_requests_cannot_crowd_out_real_ones(make_server):
    """At most half the connection slots wait for headers: the oldest waiting ones are closed."""
    live = make_server(max_connections=8)  # 4 may wait for their headers
    hogs = [open_socket(live) for _ in range(20)]
    try:
        for sock in hogs:
            sock.sendall(b"GET / HTTP/1.1\r\n")
            time.sleep(0.01)
        closed = [closed_by_server(sock, 0.2) for sock in hogs]
        assert closed == [True] * 16 + [False] * 4  # every hog but the 4 newest
        with live.client() as client:
            assert client.get("/api/v1/health").status_code == 200
    finally:
        for sock in hogs:
            sock.close()


def test_connections_over_the_limit_get_503(make_server):
    live = make_server(max_connections=4)
    gate, release = gate_job(live)
    streams = []
    try:
        for _ in range(3):  # complete requests whose answers (event streams) stay open
            streams.append(open_socket(live))
            streams[-1].sendall(f"GET /api/v1/jobs/{gate.id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(0.1)  # served before the next one connects (only 2 may wait for headers at once)
        with live.client() as client:
            assert client.get("/api/v1/health").status_code == 503
            release.set()
            for sock in streams:
                sock.close()
            time.sleep(0.3)
            assert client.get("/api/v1/health").status_code == 200
    finally:
        release.set()
        for sock in streams:
            sock.close()


# -- 8. the token stays out of the access log ------------------------------------------------------


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_query_token_is_redacted_in_the_access_log(make_server):
    live = make_server(token=STRONG, log_level="info")
    access = logging.getLogger("uvicorn.access")
    capture = Capture()
    access.addHandler(capture)
    try:
        with live.client() as client:
            assert client.get("/", params={"token": STRONG, "x": "1"}).status_code == 200
        with live.client() as stranger:
            assert stranger.get("/api/v1/jobs", params={"token": "wrong-guess-0123456789"}).status_code == 401
        time.sleep(0.2)
    finally:
        access.removeHandler(capture)
    text = "\n".join(capture.lines)
    assert "GET /?token=" in text and "x=1" in text, text
    assert STRONG not in text and "wrong-guess" not in text


# -- 9. every scope needs the token; engine options are checked before queueing ---------------------


def test_options_requests_need_the_token(make_server):
    guarded = make_server(token=STRONG)
    with guarded.client() as client:
        assert client.options("/api/v1/jobs").status_code == 401
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        assert client.options("/api/v1/inpaint", headers=preflight).status_code == 401  # CORS is off
    cors = make_server(token=STRONG, cors_origins=["https://app.example"])
    with cors.client() as client:
        allowed = client.options("/api/v1/inpaint", headers=preflight)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert client.options("/api/v1/inpaint", headers={**preflight, "Origin": "https://evil.example"}).status_code == 401
        assert client.options("/api/v1/jobs").status_code == 401


def test_websockets_need_the_token(tmp_path):
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from canvaslab.server.app import create_app

    app = create_app(ServerSettings(token=STRONG, output=tmp_path / "out"))

    async def probe(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("reached the app")
        await websocket.close()

    app.router.add_websocket_route("/ws-probe", probe)  # a plain Starlette route: no dependency injection
    with TestClient(app) as client:
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect("/ws-probe") as ws:
                ws.receive_text()
        assert refused.value.code == 1008
        with client.websocket_connect("/ws-probe", headers={"Authorization": f"Bearer {STRONG}"}) as ws:
            assert ws.receive_text() == "reached the app"


@pytest.mark.parametrize("options,field", [
    ({"patch_size": 4000}, "options.patch_size"),
    ({"colour": "red"}, "options.colour"),
])
def test_engine_options_are_checked_before_queueing(server, photo_png, mask_png, options, field):
    with server.client() as client:
        reply = client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png, engine="patchmatch", options=options))
        assert_refused(reply, 422, field, "option")
        outpaint = client.post("/api/v1/outpaint", json={"image": b64(photo_png), "engine": "patchmatch", "right": 8,
                                                         "options": options})
        assert_refused(outpaint, 422, field, "option")
        assert nothing_queued(client)
