"""ASGI middleware that decides from the request head alone: who calls, and how big a body may be.

Nothing reads a body before the caller is known and its declared size allowed, so a caller
without a token cannot make the daemon buffer anything; the route's own dependency still
decides what a known caller may do (403).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from urllib.parse import unquote_plus

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.config import parse_listen
from orchestrator.http.auth import METRICS_ONLY, Tokens

# Open to anyone: liveness, and the API's own description (no state, no secrets).
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
# The dashboard: a browser logs in with a token once and then carries a session cookie, which
# the dashboard's own routes check before anything else. Its bodies are capped here all the same.
DASHBOARD = "/ui"
# The one path the scrape-only metrics token may read.
METRICS = "/metrics"
# The largest body any route takes is a restart's overrides, a few hundred bytes; 64 KiB also
# holds an admin's extra_args or env at their per-value limit.
MAX_BODY_BYTES = 64 * 1024
# Open mode (no tokens) trusts whoever reaches a loopback port; a web page must not be that caller.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _Refused(Exception):
    def __init__(self, status: int, error: str) -> None:
        self.status = status
        self.error = error


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        tokens: Callable[[], Tokens],
        body_timeout_s: Callable[[], float],
        listen: Callable[[], str],
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        # Read per request: a reload may rotate tokens or change the timeout.
        self.tokens = tokens
        self.listen = listen
        self.body_timeout_s = body_timeout_s  # once the head is in: the slow-body slowloris
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._admit(scope, receive)
        except _Refused as r:
            await _answer(send, r.status, r.error)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        """Check the head; then read the (bounded) body and hand it on. Raises _Refused."""
        headers = Headers(scope=scope)
        tokens = self.tokens()
        if not tokens.enabled:
            _same_host_only(headers, scope["method"], self.listen())
        else:
            _token_allowed(tokens, headers.get("authorization"), scope["path"])
        _one_value_each(scope.get("query_string", b""))
        length = headers.get("content-length")
        if length is None and "transfer-encoding" not in headers:
            return receive  # no body: nothing to bound
        if length is not None and not length.isdigit():
            raise _Refused(400, "Content-Length is not a number")
        if length is not None and int(length) > self.max_body:
            raise _Refused(413, f"request body over {self.max_body} bytes")
        timeout = self.body_timeout_s()
        try:
            async with asyncio.timeout(timeout):
                body = await self._read(receive)
        except TimeoutError:
            raise _Refused(408, f"request body not received within {timeout:g} s") from None
        return _replay(body, receive)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, "client disconnected")  # the answer goes nowhere
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:  # chunked bodies declare no length up front
                raise _Refused(413, f"request body over {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _token_allowed(tokens: Tokens, authorization: str | None, path: str) -> None:
    """401 without a known token where the route needs one; 403 for the metrics token off /metrics
    (open paths and the dashboard included: it is the monitoring system's, not a person's)."""
    who = tokens.identify(authorization)
    if who.metrics_only:
        if path != METRICS:
            raise _Refused(403, METRICS_ONLY)
    elif not who.known and not _checked_elsewhere(path):
        raise _Refused(401, "missing or wrong bearer token")


def _same_host_only(headers: Headers, method: str, listen: str) -> None:
    """Open mode: refuse DNS rebinding (a foreign Host) and cross-site writes (a foreign Origin)."""
    host, port = parse_listen(listen)
    names = LOOPBACK_NAMES | {host.lower()}
    given = _hostname(headers.get("host", ""))
    if given not in names:
        raise _Refused(
            421,
            f"Host {given[:100]!r} is not this daemon's address: with no tokens set, only "
            f"loopback names are answered ({', '.join(sorted(names))})",
        )
    origin = headers.get("origin")
    if method in SAFE_METHODS or origin is None:
        return
    scheme, _, rest = origin.partition("://")
    if scheme not in ("http", "https") or _hostname(rest) not in names or _port(rest) != port:
        raise _Refused(
            403, f"cross-site request refused: Origin {origin[:100]!r} is not this daemon"
        )


def _one_value_each(query: bytes) -> None:
    """Every query parameter of this API takes one value: a repeated one is refused, not
    silently narrowed to its last value."""
    if b"&" not in query:
        return
    names = [unquote_plus(part.partition("=")[0]) for part in query.decode("latin-1").split("&")]
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise _Refused(422, f"query parameter {repeated[0]!r} given more than once")


def _hostname(authority: str) -> str:
    """The host part of HOST[:PORT] or [IPV6][:PORT], lower-cased."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


def _port(authority: str) -> int | None:
    tail = authority.rpartition("]")[2] if authority.startswith("[") else authority
    _, sep, port = tail.rpartition(":")
    return int(port) if sep and port.isdigit() else None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read above as one message; later calls (disconnect) go to the server."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def _answer(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    # No "Connection: close": closing with the body unread would reset the connection and the
    # client could lose this answer. The server discards the rest of the body as it arrives
    # (never buffering it) until the next request, or the connection's head deadline.
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _checked_elsewhere(path: str) -> bool:
    """Paths whose caller this middleware does not judge: open ones and the dashboard's."""
    return (
        path in OPEN_PATHS or path == "/" or path == DASHBOARD or path.startswith(DASHBOARD + "/")
    )
