"""Token, CORS and exposure rules, on a live server and through the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from canvaslab.server.settings import is_loopback

from .conftest import b64

TOKEN = "s3cret-token-0123456789"
PROTECTED = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/api/v1/jobs"), ("GET", "/api/v1/models"),
             ("POST", "/api/v1/inpaint"), ("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/txt2img"),
             ("GET", "/openapi.json"), ("GET", "/docs")]


@pytest.fixture
def guarded(make_server):  # type: ignore[no-untyped-def]
    return make_server(token=TOKEN)


@pytest.mark.parametrize("method,path", PROTECTED)
def test_every_route_needs_the_token(guarded, method, path):
    with guarded.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            reply = client.request(method, path, headers=headers)
            assert reply.status_code == 401, (headers, reply.status_code)
            assert "token" in reply.json()["error"]
    with guarded.client(cookies={"canvaslab_token": "nope"}) as client:
        assert client.request(method, path).status_code == 401


def test_header_cookie_and_query_token_work(guarded, photo_png, mask_png):
    with guarded.client() as client:
        assert client.get("/api/v1/health").status_code == 200  # open for probes
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/v1/jobs", headers=headers).status_code == 200
        body = {"image": b64(photo_png), "mask": b64(mask_png), "engine": "telea"}
        assert client.post("/api/v1/inpaint", json=body, headers=headers).status_code == 202
    with guarded.client(cookies={"canvaslab_token": TOKEN}) as client:
        assert client.get("/sdapi/v1/options").status_code == 200
    # The UI opened once with ?token= gets a cookie, and the browser's later calls carry it.
    with guarded.client() as browser:
        page = browser.get("/", params={"token": TOKEN})
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "HttpOnly" in page.headers["set-cookie"]
        assert browser.get("/api/v1/jobs").status_code == 200
    with guarded.client() as stranger:
        assert stranger.get("/", params={"token": "wrong"}).status_code == 401


def test_cors_is_off_unless_configured(make_server):
    plain = make_server()
    with plain.client() as client:
        reply = client.get("/api/v1/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in reply.headers
        preflight = client.options("/api/v1/inpaint", headers={"Origin": "https://evil.example",
                                                               "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
    allowed = make_server(cors_origins=["https://app.example"])
    with allowed.client() as client:
        ok = client.get("/api/v1/health", headers={"Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = client.get("/api/v1/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if k != "CANVASLAB_TOKEN"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "canvaslab", *args], capture_output=True, text=True, timeout=60,
                          env=environment)


def test_cli_refuses_public_address_without_token():
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "1")
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "needs an API token" in lines[0]


def test_help_does_not_import_the_server_stack():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom canvaslab.cli.main import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0 and 'serve' in r.output, r.output\n"
            "r = CliRunner().invoke(app, ['serve', '--help'])\nassert r.exit_code == 0 and '--token' in r.output\n"
            "heavy = {'fastapi', 'uvicorn', 'starlette', 'torch'} & set(sys.modules)\nassert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
