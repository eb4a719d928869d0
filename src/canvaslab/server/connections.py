"""How uvicorn serves the app: header timeout, shedding of half-sent requests, connection limit,
short keep-alive, redacted access log.

uvicorn waits forever for a request's headers: a client that opens connections and sends half a
request line holds them, and 300 of them made a server unreachable for a minute. The protocol class
here keeps a connection that is still waiting for its request's headers ("pending") for at most
`request_timeout` seconds, and lets at most half of `max_connections` be pending at once: a new
one closes the oldest. Real clients send their headers at once, so they are never the oldest;
their connections count against `max_connections` (more get 503). The body has its own timeout
in `security.GuardMiddleware`. Beyond a trusted network, put a reverse proxy in front that also
limits connections per client (docs/server.md): canvaslab then sees one address for everyone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from canvaslab.server.security import redact_access_log
from canvaslab.server.settings import ServerSettings

MAX_HEADER_BYTES = 16 * 1024  # a request line plus headers; A1111 clients send a few hundred bytes
KEEP_ALIVE_SECONDS = 5


def pending_limited_protocol(timeout: float, max_pending: int) -> type[asyncio.Protocol]:
    """uvicorn's own HTTP protocol class, closing connections whose request headers are late or crowd.

    Relies only on what both uvicorn protocols (h11, httptools) have: `transport` and `cycle` (the
    request being served, None before the first one; its `response_complete` once answered).
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    pending: dict[Any, asyncio.TimerHandle] = {}  # this server's waiting connections, oldest first

    class PendingLimitedProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._wait_for_headers()

        def data_received(self, data: bytes) -> None:
            if self not in pending and self._between_requests():
                self._wait_for_headers()  # a new request starts on an idle keep-alive connection
            super().data_received(data)
            if not self._between_requests():
                self._headers_arrived()  # the app (and the body timeout) take over

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_arrived()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or cycle.response_complete

        def _wait_for_headers(self) -> None:
            pending[self] = asyncio.get_running_loop().call_later(timeout, self._drop)
            while len(pending) > max_pending:
                next(iter(pending))._drop()

        def _headers_arrived(self) -> None:
            timer = pending.pop(self, None)
            if timer is not None:
                timer.cancel()

        def _drop(self) -> None:
            self._headers_arrived()
            if not self.transport.is_closing():
                self.transport.close()

    return PendingLimitedProtocol


def uvicorn_config(app: Any, settings: ServerSettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration `canvaslab serve` runs `app` with (tests and embedders use it too)."""
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": "info", "lifespan": "on",
        "http": pending_limited_protocol(settings.request_timeout, max(1, settings.max_connections // 2)),
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_graceful_shutdown": 10,  # event streams and waiting A1111 calls would otherwise hold shutdown
        "server_header": False,
    }
    options.update(overrides)
    config = uvicorn.Config(app, **options)
    redact_access_log()  # after Config: its logging set-up replaces handlers, but keeps logger filters
    return config


def serve(app: Any, settings: ServerSettings, **overrides: Any) -> None:
    """Run `app` until interrupted, as `canvaslab serve` does."""
    uvicorn.Server(uvicorn_config(app, settings, **overrides)).run()
