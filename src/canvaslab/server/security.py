"""Token check and upload limit, as one pure ASGI middleware that runs before any route.

With a token configured every route needs it except `/api/v1/health`: the `Authorization: Bearer`
header, the `canvaslab_token` cookie, or a `?token=` query (which also sets the cookie, so the
browser UI can be opened once with the token in its address). Request bodies are read here up to
the upload limit and answered 413 beyond it, before a route parses anything.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "canvaslab_token"
OPEN_PATHS = frozenset({"/api/v1/health"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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


def presented_tokens(scope: Scope) -> tuple[list[str], str | None]:
    """Tokens the request carries (header, cookie, query) and the query one, which becomes a cookie."""
    tokens = []
    auth = _header(scope, b"authorization")
    if auth and auth.lower().startswith("bearer "):
        tokens.append(auth[7:].strip())
    cookie_header = _header(scope, b"cookie")
    if cookie_header:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(cookie_header)
        except Exception:  # noqa: BLE001 - a malformed cookie header simply carries no token
            cookies = SimpleCookie()
        if COOKIE in cookies:
            tokens.append(cookies[COOKIE].value)
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
    if query:
        tokens.append(query)
    return tokens, query


def token_matches(expected: str, given: list[str]) -> bool:
    # compare_digest: the time taken does not reveal how much of a guess was right.
    return any(hmac.compare_digest(expected.encode(), token.encode()) for token in given)


class GuardMiddleware:
    """401 without the token, 413 over the upload limit; otherwise the request goes through unchanged."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS":  # CORS preflights carry no credentials
            await self.app(scope, receive, send)
            return
        if self.token is not None and scope["path"] not in OPEN_PATHS:
            tokens, query = presented_tokens(scope)
            if not token_matches(self.token, tokens):
                message = "missing or wrong API token: send 'Authorization: Bearer TOKEN' (or open the UI with ?token=TOKEN)"
                await send_json(send, 401, {"error": message}, [(b"www-authenticate", b"Bearer")])
                return
            if query is not None and token_matches(self.token, [query]):
                send = _setting_cookie(send, query)
        if scope.get("method") in BODY_METHODS:
            body = await self._read_body(scope, receive)
            if body is None:
                limit = self.max_body / (1024 * 1024)
                await send_json(send, 413, {"error": f"the request body is over the upload limit of {limit:g} MB"})
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

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
