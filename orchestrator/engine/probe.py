"""Bare HTTP/1.0 GETs to an engine: the health probe and the metrics scrape share them."""

from __future__ import annotations

import asyncio


async def http_get(host: str, port: int, path: str, body: bool = False) -> tuple[str, bytes]:
    """One HTTP/1.0 GET on a fresh connection: (status code, body if asked for).

    Bare asyncio streams: an httpx pool costs ~3x the CPU per request and checks every pooled
    connection on each one, which grows with the number of engines. Raises OSError, or
    ValueError when the answer is not HTTP.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        name = f"[{host}]" if ":" in host else host
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {name}:{port}\r\n\r\n".encode())
        status = (await reader.readline()).split()
        if len(status) < 2 or not status[0].startswith(b"HTTP/"):
            raise ValueError("the answer is not HTTP")
        if not body:
            return status[1].decode(errors="replace"), b""
        # HTTP/1.0: the answer ends where the connection does.
        head, _, data = (b"\r\n" + await reader.read()).partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            data = _dechunk(data)  # uvicorn's httptools server (vLLM's) chunks even for 1.0
        return status[1].decode(errors="replace"), data
    finally:
        writer.close()


def _dechunk(data: bytes) -> bytes:
    """The body of a chunked HTTP answer; ValueError when it is malformed or cut short."""
    out: list[bytes] = []
    at = 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        if end + 2 + size > len(data):
            raise ValueError("chunked body cut short")
        out.append(data[end + 2 : end + 2 + size])
        at = end + 4 + size


async def health(host: str, port: int, timeout: float) -> str | None:
    """None when GET /health answers 200, else what went wrong (for the engine's reason)."""
    try:
        async with asyncio.timeout(timeout):
            code, _ = await http_get(host, port, "/health")
    except TimeoutError:
        return f"/health did not answer within {timeout:g}s"
    except OSError as e:
        return f"/health unreachable ({type(e).__name__})"
    except ValueError:
        return "/health closed the connection without an HTTP answer"
    return None if code == "200" else f"/health returned {code}"
