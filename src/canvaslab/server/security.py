"""Token check, upload limit and body timeout, as one pure ASGI middleware that runs before any route;
and the access-log filter that keeps tokens out of the log.

With a token configured every scope needs it (HTTP of any method, websockets) except
`/api/v1/health` and, when CORS is on, the preflights of the allowed origins (browsers send those
without credentials). The token comes as `Authorization: Bearer TOKEN`, as the password of HTTP Basic
auth (what A1111 clients send for `--api-auth`), as the `canvaslab_token` cookie, or as a `?token=`
query (which also sets the cookie, so the browser UI can be opened once with the token in its
address). Request bodies are read here, up to the upload limit (413 beyond it) and within the request
timeout (408 beyond it), before a route parses anything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import unquote

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "canvaslab_token"
OPEN_PATHS = frozenset({"/api/v1/health"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
POLICY_VIOLATION = 1008  # websocket close code for "not allowed"


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": payload})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def query_token(scope: Scope) -> str | None:
    """The `token` query parameter, percent-decoded (a '+' stays a '+': base64 tokens carry it)."""
    for part in scope.get("query_string", b"").decode("latin-1").split("&"):
        key, sep, value = part.partition("=")
        if sep and unquote(key) == "token" and value:
            return unquote(value)
    return None


def presented_tokens(scope: Scope) -> tuple[list[str], str | None]:
    """Tokens the request carries (header, cookie, query) and the query one, which becomes a cookie."""
    tokens = []
    auth = _header(scope, b"authorization") or ""
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "bearer":
        tokens.append(credentials.strip())
    elif scheme.lower() == "basic":
        try:
            # A1111 clients authenticate with user:password; the password is the token, any user name.
            tokens.append(base64.b64decode(credentials.strip(), validate=True).decode("latin-1").partition(":")[2])
        except (binascii.Error, ValueError):
            pass
    cookie_header = _header(scope, b"cookie")
    if cookie_header:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(cookie_header)
        except CookieError:  # a malformed cookie header simply carries no token
            cookies = SimpleCookie()
        if COOKIE in cookies:
            tokens.append(cookies[COOKIE].value)
    query = query_token(scope)
    if query:
        tokens.append(query)
    return tokens, query


def token_matches(expected: str, given: list[str]) -> bool:
    # compare_digest: the time taken does not reveal how much of a guess was right.
    return any(hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace")) for token in given)


class GuardMiddleware:
    """401 without the token, 413 over the upload limit, 408 for a body that does not arrive in time."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, max_body: int, timeout: float = 60.0, cors_origins: tuple[str, ...] = ()
    ) -> None:
        self.app, self.token, self.max_body, self.timeout = app, token, max_body, timeout
        self.cors_origins = frozenset(cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        if self.token is not None and scope["path"] not in OPEN_PATHS and not self._allowed_preflight(scope):
            tokens, query = presented_tokens(scope)
            if not token_matches(self.token, tokens):
                message = "missing or wrong API token: send 'Authorization: Bearer TOKEN' (or open the UI with ?token=TOKEN)"
                await send_json(send, 401, {"error": message}, [(b"www-authenticate", b"Bearer")])
                return
            if query is not None and token_matches(self.token, [query]):
                send = _setting_cookie(send, query)
        if scope.get("method") in BODY_METHODS:
            try:
                body = await asyncio.wait_for(self._read_body(scope, receive), self.timeout)
            except asyncio.TimeoutError:
                error = f"the request body did not arrive within {self.timeout:g} seconds (--request-timeout)"
                await send_json(send, 408, {"error": error}, [(b"connection", b"close")])
                return
            if body is None:
                limit = self.max_body / (1024 * 1024)
                await send_json(send, 413, {"error": f"the request body is over the upload limit of {limit:g} MB"})
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _allowed_preflight(self, scope: Scope) -> bool:
        """A CORS preflight from an allowed origin (browsers send it without credentials); nothing else is."""
        return (
            scope.get("method") == "OPTIONS"
            and _header(scope, b"access-control-request-method") is not None
            and _header(scope, b"origin") in self.cors_origins
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or token_matches(self.token, presented_tokens(scope)[0]):
            await self.app(scope, receive, send)
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": "missing or wrong API token"})

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit (Content-Length is trusted only to refuse early)."""
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as servers do

    return replay


def _setting_cookie(send: Send, token: str) -> Send:
    cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
        await send(message)

    return sending


# -- logs --------------------------------------------------------------------------------------

_QUERY_TOKEN = re.compile(r"(?<=[?&])token=[^&\s\"]*")


class RedactTokens(logging.Filter):
    """Replaces `token=...` in a log record's message and arguments (uvicorn logs the full path + query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _QUERY_TOKEN.sub("token=[redacted]", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_QUERY_TOKEN.sub("token=[redacted]", a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_access_log() -> None:
    """Install RedactTokens on uvicorn's access logger once (logging.config leaves logger filters in place)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
