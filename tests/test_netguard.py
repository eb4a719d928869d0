"""The suite's network guard (tests/netguard) really stops and reports a connection off this machine."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def consume_log(start: int) -> str:
    """Read what was logged since `start`, then cut it off so `_no_network` does not fail this test."""
    log = Path(os.environ["CANVASLAB_NETGUARD_LOG"])
    text = log.read_text(encoding="utf-8")[start:] if log.exists() else ""
    if log.exists():
        with log.open("r+", encoding="utf-8") as handle:
            handle.truncate(start)
    return text


def log_size() -> int:
    log = Path(os.environ["CANVASLAB_NETGUARD_LOG"])
    return log.stat().st_size if log.exists() else 0


def test_a_connection_off_the_machine_is_refused_and_logged():
    start = log_size()
    # ConnectionRefusedError: the guard's NetworkAttempt may come from `sitecustomize` (a subprocess-started
    # xdist worker) or from `netguard.sitecustomize` (this conftest): two module names, one base class
    with pytest.raises(ConnectionRefusedError, match="test network guard"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1: never routed
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("huggingface.co", 443)
    logged = consume_log(start)
    assert "connect 192.0.2.1:443" in logged and "resolve huggingface.co" in logged


def test_subprocesses_are_guarded_too():
    start = log_size()
    code = "import urllib.request\ntry:\n    urllib.request.urlopen('https://huggingface.co', timeout=5)\nexcept OSError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "test network guard" in out.stdout
    assert "resolve huggingface.co" in consume_log(start)


def test_loopback_stays_allowed():
    start = log_size()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    client.close(), server.close()
    assert consume_log(start) == ""
