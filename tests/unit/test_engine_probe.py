"""The bare HTTP/1.0 client behind the health probe and the metrics scrape."""

from __future__ import annotations

import pytest

from orchestrator.engine.probe import _dechunk, health, http_get
from tests.health_server import HANG, OK, UNAVAILABLE, HealthServer


async def test_get_sends_http10_with_host_and_returns_the_status() -> None:
    async with HealthServer(OK).running() as srv:
        assert await http_get("127.0.0.1", srv.port, "/health") == ("200", b"")
    assert srv.requests == [f"GET /health HTTP/1.0\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode()]


async def test_body_is_read_to_the_end_and_dechunked() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    )
    async with HealthServer(chunked).running() as srv:
        assert await http_get("127.0.0.1", srv.port, "/metrics", body=True) == (
            "200",
            b"hello, world",
        )
    plain = b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\na\r\n"
    async with HealthServer(plain).running() as srv:
        assert await http_get("127.0.0.1", srv.port, "/metrics", body=True) == ("200", b"a\r\n")


def test_dechunk_rejects_a_cut_short_body() -> None:
    with pytest.raises(ValueError, match="cut short"):
        _dechunk(b"a\r\nabc")
    with pytest.raises(ValueError):
        _dechunk(b"zz\r\n")


async def test_health_says_what_went_wrong() -> None:
    async with HealthServer(OK).running() as srv:
        assert await health("127.0.0.1", srv.port, 1.0) is None
        srv.answer = UNAVAILABLE
        assert await health("127.0.0.1", srv.port, 1.0) == "/health returned 503"
        srv.answer = b"SSH-2.0-OpenSSH\r\n"
        assert "without an HTTP answer" in (await health("127.0.0.1", srv.port, 1.0) or "")
        srv.answer = HANG
        assert await health("127.0.0.1", srv.port, 0.05) == "/health did not answer within 0.05s"
        port = srv.port
    assert await health("127.0.0.1", port, 1.0) == "/health unreachable (ConnectionRefusedError)"
