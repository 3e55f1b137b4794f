"""Streaming load generator, run as its own process: N keep-alive HTTP/1.1 clients on raw
asyncio streams (uvloop when installed), each sending streamed /v1/completions back to back.

    python -m tests.perf._stream_loadgen URL MODEL --clients 64 --duration 10 --max-tokens 128
    python -m tests.perf._stream_loadgen URL MODEL --clients 1000 --hold 20   # open streams only

Tokens are the answer's events that carry `"text"` (one per token in vLLM's and the null
server's completions); TTFT is send -> first such event. Nothing is JSON-decoded. Prints one
JSON object with its own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from urllib.parse import urlsplit

_END = b"data: [DONE]\n\n\r\n0\r\n\r\n"
_TOKEN = b'"text"'


def _request(host: str, port: int, model: str, max_tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": model,
            "prompt": "the quick brown fox jumps over the lazy dog",
            "max_tokens": max_tokens,
            "stream": True,
            "ignore_eos": True,
        }
    ).encode()
    # OpenAI's SDKs take the key from OPENAI_API_KEY; so does this (a gateway with keys).
    key = os.environ.get("OPENAI_API_KEY")
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/completions HTTP/1.1\r\nhost: {host}:{port}\r\n{auth}"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _stream_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, float | None]:
    """One streamed answer: (tokens, seconds to the first token)."""
    t0 = time.perf_counter()
    writer.write(request)
    tokens, ttft, tail = 0, None, b""
    while True:
        data = await reader.read(262144)
        if not data:
            raise ConnectionError("closed mid-answer")
        n = (tail[1 - len(_TOKEN) :] + data).count(_TOKEN) if tail else data.count(_TOKEN)
        if n and ttft is None:
            ttft = time.perf_counter() - t0
        tokens += n
        tail = (tail + data)[-len(_END) :]
        if tail.endswith(_END):
            return tokens, ttft


async def _client(url: str, request: bytes, until: float, out: dict[str, list[float]]) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while time.perf_counter() < until:
            tokens, ttft = await _stream_once(reader, writer, request)
            out["tokens"].append(tokens)
            if ttft is not None:
                out["ttft"].append(ttft)
    finally:
        writer.close()


async def _hold(url: str, request: bytes, opened: list[int], seconds: float) -> None:
    """Open one stream and read it slowly, without finishing, for `seconds`."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(request)
    first = await reader.read(65536)
    if first.startswith(b"HTTP/1.1 200"):
        opened.append(1)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if not await reader.read(65536):
            break
    writer.close()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _main(a: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(a.url)
    assert parts.hostname is not None and parts.port is not None
    request = _request(parts.hostname, parts.port, a.model, a.max_tokens)
    if a.hold:
        opened: list[int] = []
        tasks = [
            asyncio.create_task(_hold(a.url, request, opened, a.hold)) for _ in range(a.clients)
        ]
        await asyncio.sleep(a.hold / 2)
        print(json.dumps({"opened": len(opened)}), flush=True)  # the parent measures now
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"opened": len(opened)}
    out: dict[str, list[float]] = {"tokens": [], "ttft": []}
    cpu0 = _cpu()
    t0 = time.perf_counter()
    until = t0 + a.duration
    results = await asyncio.gather(
        *(_client(a.url, request, until, out) for _ in range(a.clients)), return_exceptions=True
    )
    elapsed = time.perf_counter() - t0
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    tokens = sum(out["tokens"])
    return {
        "clients": a.clients,
        "requests": len(out["tokens"]),
        "tokens": tokens,
        "seconds": round(elapsed, 3),
        "tok_s": round(tokens / elapsed, 1),
        "ttft_p50_ms": _ms(_pct(out["ttft"], 0.5)),
        "ttft_p99_ms": _ms(_pct(out["ttft"], 0.99)),
        "cpu_s": round(_cpu() - cpu0, 3),
        "errors": errors[:3],
    }


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 3)


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("model")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--hold", type=float, default=0.0, help="open streams for this long only")
    a = p.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        result = uvloop.run(_main(a))
    except ImportError:
        result = asyncio.run(_main(a))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
