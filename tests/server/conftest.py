"""A live server on loopback (uvicorn in a thread, a free port) and small real images to send it."""

from __future__ import annotations

import base64
import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from canvaslab.server.app import create_app  # noqa: E402
from canvaslab.server.connections import uvicorn_config  # noqa: E402
from canvaslab.server.settings import ServerSettings  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    app: object
    settings: ServerSettings
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_server(settings: ServerSettings, log_level: str = "warning") -> LiveServer:
    """The app under the same uvicorn configuration `canvaslab serve` uses (timeouts, limits, log filter)."""
    settings.port = free_port()
    app = create_app(settings)
    config = uvicorn_config(app, settings, host="127.0.0.1", log_level=log_level)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{settings.port}", app, settings, server, thread)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers with the given settings (output under tmp_path); all stop after the test."""
    started: list[LiveServer] = []

    def make(log_level: str = "warning", **fields: object) -> LiveServer:
        fields.setdefault("output", tmp_path / "out")
        live = start_server(ServerSettings(**fields), log_level)  # type: ignore[arg-type]
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A server with default settings (classical engines; patchmatch by default)."""
    return make_server()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def photo_png() -> bytes:
    """A real 64x48 photo crop, as PNG bytes."""
    image = Image.open(EXAMPLES / "coffee.png").convert("RGB").resize((64, 48), Image.Resampling.LANCZOS)
    return png_bytes(np.asarray(image))


@pytest.fixture(scope="session")
def mask_png() -> bytes:
    """A 64x48 mask with a white (fill) box."""
    mask = np.zeros((48, 64), np.uint8)
    mask[16:32, 20:44] = 255
    return png_bytes(mask)


def wait_done(client: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")
