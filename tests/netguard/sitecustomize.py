"""Network guard for the test suite: any connection that would leave this machine fails the test.

The suite runs offline by design (tiny models, no hub). A test that merely *happens* to pass offline
proves nothing about "never downloads": with this guard, a library that tries the network (a hub
lookup, a telemetry ping, a DNS query) is stopped at the socket and the attempt is written to the log
named by CANVASLAB_NETGUARD_LOG, which tests/conftest.py checks after every test and fails on.

It is a `sitecustomize` so that subprocesses (the CLI tests run `python -m canvaslab`, training tests
run `accelerate launch`) are guarded too: tests/conftest.py puts this folder first on PYTHONPATH.
Loopback (the server tests' uvicorn, torch.distributed on 127.0.0.1) and Unix sockets stay allowed.
"""

from __future__ import annotations

import ipaddress
import os
import socket


class NetworkAttempt(ConnectionRefusedError):
    """Raised instead of connecting: code that handles 'offline' still sees a refused connection."""


def _is_local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    return (host in {"", "localhost", "0.0.0.0", "::", "::1", "ip6-localhost"} or host.startswith("127.")
            or host.endswith(".localhost") or host == socket.gethostname().lower())


def _is_address(host: object) -> bool:
    """A numeric IP needs no lookup: its connection is judged by the connect guard."""
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host))
    except ValueError:
        return False
    return True


def _record(what: str) -> None:
    log = os.environ.get("CANVASLAB_NETGUARD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"pid {os.getpid()}: {what}\n")


def _remote(sock: socket.socket, address: object) -> str | None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return None
    return None if _is_local(address[0]) else f"{address[0]}:{address[1]}"


def install() -> None:
    if getattr(socket.socket.connect, "_canvaslab_guard", False):
        return
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(self, address):
        remote = _remote(self, address)
        if remote:
            _record(f"connect {remote}")
            raise NetworkAttempt(f"test network guard: connection to {remote} refused (tests run offline)")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        remote = _remote(self, address)
        if remote:
            _record(f"connect {remote}")
            return 111  # ECONNREFUSED
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_local(host) and not _is_address(host):
            _record(f"resolve {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"test network guard: no lookup of {host} (tests run offline)")
        return getaddrinfo(host, *args, **kwargs)

    guarded_connect._canvaslab_guard = True  # type: ignore[attr-defined]
    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = guarded_getaddrinfo


if os.environ.get("CANVASLAB_NETGUARD_LOG"):
    install()
