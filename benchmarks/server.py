"""Load test of `canvaslab serve` on loopback: many clients at once, each request followed to its result.

A real server process (`python -m canvaslab serve --engine telea`, one worker) and --clients threads,
each sending --requests requests one after another: a native inpaint of a small real photo crop
(POST /api/v1/inpaint, follow its Server-Sent Events to `done`, download the PNG and check the
recipe's seed), and every --a1111-every-th request an A1111 img2img (synchronous) instead.

Named baseline: the same inpaint called in-process, one after another (`canvaslab.inpaint` on the
decoded image, result encoded to PNG with its recipe), i.e. the work without HTTP, queue or files.

Reported: throughput (requests/s over the wall time), p50/p95/max latency (submit -> result in
hand), lost jobs (accepted but never delivered: must be 0), 5xx answers (must be 0), 429 answers
(the queue is larger than the client count, so none are expected), and the server's peak RSS (VmHWM).

    python benchmarks/server.py [--clients 20] [--requests 25] [--size 64] [--engine telea]

`--hostile` measures instead what hostile clients can do to a server with its default limits
(`canvaslab serve`, patchmatch, one worker): /health latency (p50/p95/max over 20 Hz polling) while
the worker runs the largest job the defaults allow (PatchMatch on 2048x2048 with a 10 % hole), that
job's time and the server's peak RSS, how long a cancel of it takes to land; then /health while 300
connections sit on half-sent request lines, and how many of them the server closed; then hostile
bodies to the routes answered outside the queue or taking multipart uploads (/api/v1/mask,
/sam/sam-predict, /controlnet/detect, /api/v1/video/inpaint), 4 clients at once (one per route), each
kind --bad-repeats times: an oversized body (over --max-upload-mb), a decompression bomb (a valid
16384x16384 PNG of ~0.3 MB), garbage where the image goes, a garbage body; the answers (status, slowest)
and /health meanwhile.

    python benchmarks/server.py --hostile [--side 2048] [--half-sent 300] [--bad-repeats 5]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import numpy as np
from PIL import Image

from canvaslab.core.metadata import read_metadata

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inputs(size: int) -> tuple[str, str]:
    photo = Image.open(ROOT / "examples" / "coffee.png").convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : size // 2, size // 3 : 2 * size // 3] = 255
    encoded = []
    for image in (photo, Image.fromarray(mask)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    return encoded[0], encoded[1]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.lost: list[str] = []

    def add(self, seconds: float | None, status: int, lost: str | None = None) -> None:
        with self.lock:
            self.statuses[status] += 1
            if seconds is not None:
                self.latencies.append(seconds)
            if lost:
                self.lost.append(lost)


def native_request(client: httpx.Client, image: str, mask: str, seed: int, tally: Tally) -> None:
    started = time.perf_counter()
    reply = client.post("/api/v1/inpaint", json={"image": image, "mask": mask, "seed": seed})
    if reply.status_code != 202:
        tally.add(None, reply.status_code)
        return
    job_id, done = reply.json()["id"], None
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as stream:
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "done":
                done = json.loads(line[6:])
    if done is None or done["status"] != "done":
        tally.add(None, 200, f"{job_id}: {done and done['status']}")
        return
    png = client.get(done["result"]["images"][0]["url"])
    ok = png.status_code == 200 and (read_metadata(png.content).recipe or {}).get("request", {}).get("seed") == seed
    tally.add(time.perf_counter() - started, png.status_code, None if ok else f"{job_id}: result missing")


def a1111_request(client: httpx.Client, image: str, mask: str, seed: int, tally: Tally) -> None:
    started = time.perf_counter()
    reply = client.post("/sdapi/v1/img2img", json={"init_images": [image], "mask": mask, "seed": seed, "mask_blur": 0})
    if reply.status_code != 200:
        tally.add(None, reply.status_code)
        return
    ok = len(reply.json()["images"]) == 1 and json.loads(reply.json()["info"])["all_seeds"] == [seed]
    tally.add(time.perf_counter() - started, 200, None if ok else "img2img: wrong answer")


def client_loop(url: str, index: int, args: argparse.Namespace, image: str, mask: str, tally: Tally) -> None:
    with httpx.Client(base_url=url, timeout=600) as client:
        for k in range(args.requests):
            seed = index * 1000 + k
            send = a1111_request if args.a1111_every and (k + 1) % args.a1111_every == 0 else native_request
            try:
                send(client, image, mask, seed, tally)
            except httpx.HTTPError as exc:
                tally.add(None, 599, f"client {index} request {k}: {type(exc).__name__}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args: argparse.Namespace, output: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "canvaslab", "serve", "--port", str(port), "--engine", args.engine,
               "--output", output, "--queue-size", str(max(64, 2 * args.clients)), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the server did not start: {server.stderr.read() if server.stderr else ''}")


def in_process_rate(args: argparse.Namespace, image: str, mask: str, count: int = 100) -> float:
    """Requests/s of the same work without the server: decode, inpaint, encode with the recipe."""
    import canvaslab

    image_bytes, mask_bytes = base64.b64decode(image), base64.b64decode(mask)
    canvaslab.inpaint(image_bytes, mask_bytes, engine=args.engine, seed=0).encode()  # warm-up
    started = time.perf_counter()
    for seed in range(count):
        canvaslab.inpaint(image_bytes, mask_bytes, engine=args.engine, seed=seed).encode()
    return count / (time.perf_counter() - started)


class HealthProbe:
    """Polls /health at 20 Hz in a thread, recording each answer's latency (and status)."""

    def __init__(self, url: str) -> None:
        self.url, self.samples, self.statuses = url, [], Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get("/api/v1/health").status_code
                except httpx.HTTPError:
                    status = 599
                self.samples.append(time.perf_counter() - started)
                self.statuses[status] += 1
                self.stop.wait(max(0.0, 0.05 - (time.perf_counter() - started)))

    def __enter__(self) -> HealthProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(130)

    def summary(self) -> str:
        values = sorted(self.samples)
        if not values:
            return "no answers"
        pick = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1000  # noqa: E731
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return f"{pick(0.5):.0f} / {pick(0.95):.0f} / {values[-1] * 1000:.0f} ms over {len(values)} probes ({codes})"


def big_job(client: httpx.Client, side: int, seed: int) -> str:
    """Queue PatchMatch on a side x side photo with a centred hole of 10 % of it; returns the job id."""
    image, mask = inputs(side)
    hole = np.zeros((side, side), np.uint8)
    edge = int(side * 0.316)  # 0.316^2 = 10 %
    hole[(side - edge) // 2 : (side + edge) // 2, (side - edge) // 2 : (side + edge) // 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(hole).save(buffer, format="PNG")
    reply = client.post("/api/v1/inpaint", json={"image": image, "mask": base64.b64encode(buffer.getvalue()).decode(),
                                                 "engine": "patchmatch", "seed": seed})
    reply.raise_for_status()
    return reply.json()["id"]


def wait_job(client: httpx.Client, job_id: str) -> dict:
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)


def hostile(args: argparse.Namespace) -> None:
    rows: list[tuple[str, str]] = []
    args.engine, args.clients = "patchmatch", 1
    with TemporaryDirectory() as output:
        server, url = start_server(args, output, "--max-upload-mb", f"{args.max_upload_mb:g}")
        try:
            with httpx.Client(base_url=url, timeout=600) as client:
                # Warm-up (numba compile or cache load) on a small job, so the numbers are the work's.
                wait_job(client, big_job(client, 256, 0))
                with HealthProbe(url) as idle:
                    time.sleep(2)
                rows.append(("/health p50/p95/max, idle", idle.summary()))
                started = time.perf_counter()
                with HealthProbe(url) as busy:
                    job = wait_job(client, big_job(client, args.side, 1))
                seconds = time.perf_counter() - started
                rows.append((f"/health p50/p95/max, {args.side}x{args.side} PatchMatch running", busy.summary()))
                rows.append((f"{args.side}x{args.side} PatchMatch, 10 % hole", f"{job['status']} in {seconds:.1f} s, "
                             f"server peak RSS {peak_rss_mb(server.pid):.0f} MB"))
                job_id = big_job(client, args.side, 2)
                while client.get(f"/api/v1/jobs/{job_id}").json()["status"] != "running":
                    time.sleep(0.02)
                time.sleep(1.0)
                asked = time.perf_counter()
                client.post(f"/api/v1/jobs/{job_id}/cancel")
                job = wait_job(client, job_id)
                rows.append(("cancel of the running job lands after", f"{time.perf_counter() - asked:.2f} s ({job['status']})"))
            hogs = []
            host, port = url.removeprefix("http://").split(":")
            for _ in range(args.half_sent):
                sock = socket.create_connection((host, int(port)))
                sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # never finished
                hogs.append(sock)
            with HealthProbe(url) as crowded:
                time.sleep(3)
            closed = 0
            for sock in hogs:
                sock.settimeout(0.01)
                try:
                    closed += sock.recv(1) == b""
                except (socket.timeout, ConnectionResetError):
                    pass
                sock.close()
            rows.append((f"/health p50/p95/max, {args.half_sent} half-sent requests open", crowded.summary()))
            rows.append(("half-sent connections the server closed", f"{closed}/{args.half_sent} within 3 s"))
            rows.extend(bad_bodies(url, args))
        finally:
            server.terminate()
            server.wait(30)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def bomb_png(side: int = 16384) -> bytes:
    """A valid greyscale PNG of side x side black pixels: ~0.3 MB that decodes to side^2 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row = zlib.compressobj(9), b"\0" * (side + 1)  # filter byte + a black row
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def bad_bodies(url: str, args: argparse.Namespace) -> list[tuple[str, str]]:
    """Hostile bodies to the newer routes, one client per route at once, with /health polled meanwhile."""
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 256, 1 << 20, np.uint8).tobytes()  # 1 MB that is no image
    oversized = "A" * int((args.max_upload_mb + 1) * 1024 * 1024)  # base64 text over the upload limit
    bomb, small = base64.b64encode(bomb_png()).decode(), inputs(64)
    json_routes = {
        "/api/v1/mask": lambda image: {"image": image, "points": [[8, 8]]},
        "/sam/sam-predict": lambda image: {"input_image": image, "sam_positive_points": [[8, 8]]},
        "/controlnet/detect": lambda image: {"controlnet_input_images": [image], "controlnet_module": "canny"},
    }
    images = {"oversized": oversized, "bomb": bomb, "garbage image": base64.b64encode(garbage).decode()}

    def send(client: httpx.Client, route: str, kind: str) -> httpx.Response:
        if route == "/api/v1/video/inpaint":
            mask = ("mask.png", base64.b64decode(small[1]), "image/png")
            parts = {"oversized": {"clip": ("clip.mp4", oversized.encode(), "video/mp4"), "mask": mask},
                     "bomb": {"frame": ("0.png", base64.b64decode(bomb), "image/png"), "mask": mask},
                     "garbage image": {"clip": ("clip.mp4", garbage, "video/mp4"), "mask": mask}}
            if kind == "garbage body":
                return client.post(route, content=garbage, headers={"content-type": "multipart/form-data; boundary=x"})
            return client.post(route, data={"request": "{}"}, files=parts[kind])
        if kind == "garbage body":
            return client.post(route, content=garbage, headers={"content-type": "application/json"})
        return client.post(route, content=bodies[(route, kind)], headers={"content-type": "application/json"})

    kinds = ("oversized", "bomb", "garbage image", "garbage body")
    # encoded once, before the clock: a 51 MB json.dumps in this process would stall the /health probe's thread
    bodies = {(route, kind): json.dumps(make(image)).encode() for route, make in json_routes.items()
              for kind, image in images.items()}
    results: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def client_for(route: str, phase: tuple[str, ...]) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(args.bad_repeats):
                for kind in phase:
                    started = time.perf_counter()
                    try:
                        status = send(client, route, kind).status_code
                    except httpx.HTTPError:  # the server may close an oversized upload before reading it all
                        status = 0
                    results.setdefault((route, kind), []).append((status, time.perf_counter() - started))

    routes = [*json_routes, "/api/v1/video/inpaint"]
    rows = []
    # oversized uploads apart: 4 x 51 MB through loopback at once load both cores (client and server) by themselves
    for phase, what in ((kinds[:1], "oversized bodies"), (kinds[1:], "bombs and garbage")):
        with HealthProbe(url) as probe:
            threads = [threading.Thread(target=client_for, args=(route, phase)) for route in routes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        rows.append((f"/health p50/p95/max, {what} to {len(routes)} routes", probe.summary()))
    for route in routes:
        parts = []
        for kind in kinds:
            answers = results[(route, kind)]
            codes = "/".join(f"{code or 'closed'} x{n}" for code, n in sorted(Counter(c for c, _ in answers).items()))
            parts.append(f"{kind} {codes} (slowest {max(t for _, t in answers) * 1000:.0f} ms)")
        rows.append((route, "; ".join(parts)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--engine", default="telea")
    parser.add_argument("--a1111-every", type=int, default=5, help="every N-th request is an A1111 img2img (0: none)")
    parser.add_argument("--hostile", action="store_true", help="measure the cost bounds instead (see above)")
    parser.add_argument("--side", type=int, default=2048, help="--hostile: side of the big PatchMatch job")
    parser.add_argument("--half-sent", type=int, default=300, help="--hostile: half-sent connections to open")
    parser.add_argument("--bad-repeats", type=int, default=5, help="--hostile: times each hostile body is sent to each route")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="--hostile: the server's --max-upload-mb")
    args = parser.parse_args()
    if args.hostile:
        hostile(args)
        return
    image, mask = inputs(args.size)
    tally = Tally()
    with TemporaryDirectory() as output:
        server, url = start_server(args, output)
        try:
            # One warm-up request (engine import, first decode) so the table measures serving.
            with httpx.Client(base_url=url, timeout=120) as client:
                native_request(client, image, mask, 999_999, Tally())
            started = time.perf_counter()
            threads = [threading.Thread(target=client_loop, args=(url, i, args, image, mask, tally))
                       for i in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            rss = peak_rss_mb(server.pid)
            files = len(list(Path(output).rglob("*.png")))
        finally:
            server.terminate()
            server.wait(30)
    baseline = in_process_rate(args, image, mask)
    total = args.clients * args.requests
    served = len(tally.latencies)
    latencies = sorted(tally.latencies)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")
    rows = [
        ("clients x requests", f"{args.clients} x {args.requests} = {total}"),
        ("engine, image", f"{args.engine}, {args.size}x{args.size} (1 worker, every {args.a1111_every}th via A1111)"),
        ("served", f"{served}/{total}"),
        ("throughput", f"{served / wall:.1f} requests/s over {wall:.1f} s"),
        ("baseline: in-process, serial", f"{baseline:.1f} requests/s (server = {served / wall / baseline:.2f}x)"),
        ("latency p50 / p95 / max", f"{statistics.median(latencies) * 1000:.0f} / {p95 * 1000:.0f} / {latencies[-1] * 1000:.0f} ms"
         if latencies else "n/a"),
        ("lost jobs", str(len(tally.lost))),
        ("5xx answers", str(sum(n for code, n in tally.statuses.items() if code >= 500))),
        ("429 answers", str(tally.statuses.get(429, 0))),
        ("result files on disk", str(files)),
        ("server peak RSS", f"{rss:.0f} MB"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for line in tally.lost[:10]:
        print("lost:", line)
    if tally.lost or any(code >= 500 for code in tally.statuses):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
