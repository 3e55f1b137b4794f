"""Forward one request to its engine and pass the answer back as it comes.

Each piece aiohttp reads from the engine goes out in one ASGI send, at once: nothing is
collected, and a token is never decoded. A client that goes away cancels the forwarding, which
closes the engine connection; vLLM aborts a request whose client disconnected
(`entrypoints/utils.py`, `with_cancellation`), freeing its slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.types import Receive, Send

from orchestrator.gateway import errors
from orchestrator.gateway.routes import Route
from orchestrator.gateway.usage import BodyTail, StreamTap, Usage

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
# Hop-by-hop and framing headers (RFC 9110 7.6.1): each side of the gateway has its own.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
    }
)
_REQUEST_ID = b"x-request-id"
# aiohttp adds these when absent; the engine should see only what the client sent.
_NO_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass
class Exchange:
    """One request on its way: what to send, and what happened."""

    route: Route
    path: str
    body: bytes
    headers: list[tuple[str, str]]  # for the engine
    request_id: str
    usage: bool  # read the answer's token counts
    strip_usage: bool  # the gateway asked for the usage event: take it out again
    started: float  # time.perf_counter() when the request arrived
    status: int = 0
    ttft_s: float | None = None
    error: str | None = None
    streamed: bool = False
    tokens: Usage | None = None


def upstream_headers(
    scope_headers: Iterable[tuple[bytes, bytes]], request_id: str, replace: Mapping[str, str]
) -> list[tuple[str, str]]:
    """The client's headers for the engine: hop-by-hop ones out, the request id and the
    admission's replacements in (an empty replacement removes the header)."""
    drop = {k.lower().encode() for k in replace} | {_REQUEST_ID}
    out = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope_headers
        if k not in _HOP and k not in drop
    ]
    out.append(("X-Request-Id", request_id))
    out.extend((k, v) for k, v in replace.items() if v)
    return out


def response_headers(
    raw: Iterable[tuple[bytes, bytes]], request_id: str, keep_length: bool
) -> Headers:
    out: Headers = []
    has_id = False
    for k, v in raw:
        name = k.lower()
        if name in _HOP and not (keep_length and name == b"content-length"):
            continue
        has_id = has_id or name == _REQUEST_ID
        out.append((name, v))
    if not has_id:
        out.append((_REQUEST_ID, request_id.encode()))
    return out


class Forwarder:
    """Owns the engine connections (kept alive, one pool for all engines)."""

    def __init__(self, connect_timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False
        )
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def forward(self, ex: Exchange, receive: Receive, send: Send) -> None:
        """Serve `ex` to the client; an engine that cannot be reached raises ApiError before
        anything was sent. A client that goes away ends it quietly (ex.error says so)."""
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(_watch(receive, task, gone))
        try:
            await self._relay(ex, send)
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            task.uncancel()
            ex.error = "client disconnected"
        finally:
            watcher.cancel()

    async def _relay(self, ex: Exchange, send: Send) -> None:
        assert self.session is not None
        try:
            resp = await self.session.post(
                ex.route.url + ex.path,
                data=ex.body,
                headers=ex.headers,
                allow_redirects=False,
                skip_auto_headers=_NO_AUTO,
            )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise errors.unreachable(ex.route.served_name, _why(exc)) from None
        try:
            await self._answer(ex, resp, send)
        finally:
            resp.close()

    async def _answer(self, ex: Exchange, resp: aiohttp.ClientResponse, send: Send) -> None:
        ex.status = resp.status
        ex.streamed = resp.content_type == "text/event-stream"
        tap = StreamTap(ex.strip_usage) if ex.streamed and ex.usage else None
        tail = BodyTail() if ex.usage and not ex.streamed else None
        start = {
            "type": "http.response.start",
            "status": resp.status,
            "headers": response_headers(resp.raw_headers, ex.request_id, not ex.strip_usage),
        }
        await send(start)
        try:
            await self._pieces(ex, resp, send, tap, tail)
        finally:
            # Also when the client left: an SDK closes right after `data: [DONE]`, so the usage
            # event has usually passed through by then and its count holds.
            if tap is not None:
                ex.tokens = tap.usage()
            elif tail is not None:
                ex.tokens = tail.usage()

    @staticmethod
    async def _pieces(
        ex: Exchange, resp: aiohttp.ClientResponse, send: Send,
        tap: StreamTap | None, tail: BodyTail | None,
    ) -> None:  # fmt: skip
        try:
            async for piece in resp.content.iter_any():
                if tap is not None:
                    piece = tap.feed(piece)
                elif tail is not None:
                    tail.feed(piece)
                if piece:
                    if ex.ttft_s is None:
                        ex.ttft_s = time.perf_counter() - ex.started
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        except aiohttp.ClientError as exc:
            # Headers are out: the only honest signal left is a connection closed mid-answer.
            ex.error = f"engine connection lost mid-answer: {_why(exc)}"
            log.warning("gateway: %s (%s, request %s)", ex.error, ex.route.name, ex.request_id)
            return
        last = tap.end() if tap is not None else b""
        await send({"type": "http.response.body", "body": last, "more_body": False})


async def _watch(receive: Receive, task: asyncio.Task[Any], gone: asyncio.Event) -> None:
    """Cancel the forwarding when the client disconnects (uvicorn's send() would just drop the
    bytes, and before the first token there is nothing to send at all)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            task.cancel()
            return


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
