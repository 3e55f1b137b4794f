"""A null OpenAI-compatible server that answers instantly: measures the bench client's own ceiling.

It speaks just enough of vLLM's API (/health, /v1/models, streamed /v1/completions and
/v1/chat/completions with usage, /metrics with emulated prefix-cache counters) to exercise every
path of the bench without an engine. Raw asyncio rather than a framework, so it is not what limits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from orchestrator.prom_text import Family, Sample, render

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 500: "Error"}


@dataclass(frozen=True)
class NullServerConfig:
    model: str = "null"
    tokens: int | None = None  # tokens per answer; None answers max_tokens of each request
    token_delay_s: float = 0.0  # pause between tokens; 0 sends the whole answer in one write
    fail_every: int = 0  # every Nth generation request answers 500 (0: never)
    prefix_caching: bool = True  # whether the emulated prefix cache ever hits
    block_size: int = 16  # tokens per cache block, as vLLM hashes full blocks only
    api_key: str | None = None  # when set, generation requests need `Authorization: Bearer <key>`


@dataclass
class _Cache:
    """vLLM-like prefix cache over word "tokens": chained hashes of full blocks."""

    blocks: set[int] = field(default_factory=set)
    queries: int = 0
    hits: int = 0

    def lookup(self, tokens: list[str], block_size: int, enabled: bool) -> None:
        if not enabled:
            return  # vLLM without prefix caching counts no queries either
        self.queries += len(tokens)
        # The last prompt token is always recomputed, so at most len-1 tokens can hit.
        parent = 0
        for end in range(block_size, len(tokens), block_size):
            parent = hash((parent, *tokens[end - block_size : end]))
            if parent not in self.blocks:
                return
            self.hits += block_size

    def insert(self, tokens: list[str], block_size: int) -> None:
        parent = 0
        for end in range(block_size, len(tokens) + 1, block_size):
            parent = hash((parent, *tokens[end - block_size : end]))
            self.blocks.add(parent)


class NullServer:
    """Serve on 127.0.0.1 (port 0 picks a free one); use as `async with NullServer(cfg) as s`."""

    def __init__(self, config: NullServerConfig | None = None) -> None:
        self.config = config or NullServerConfig()
        self.cache = _Cache()
        self.generation_requests = 0
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._connection, host, port)
        bound = self._server.sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Server.close() leaves open connections alone (3.11); end them so no handler lingers.
        handlers = list(self._connections.values())
        for writer in list(self._connections):
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def __aenter__(self) -> NullServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[writer] = task
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away; nothing to answer
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        keep_alive = headers.get("connection", "").lower() != "close"
        if method == "GET" and path == "/health":
            await _respond(writer, 200, b"", "text/plain")
        elif method == "GET" and path == "/v1/models":
            data = [{"id": self.config.model, "object": "model", "root": self.config.model}]
            await _respond(writer, 200, json.dumps({"object": "list", "data": data}).encode())
        elif method == "GET" and path == "/metrics":
            await _respond(writer, 200, self.metrics_text().encode(), "text/plain; version=0.0.4")
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            await self._generate(writer, headers, body, chat=path.endswith("chat/completions"))
        else:
            await _respond(writer, 404, _error(f"no route {method} {path}"))
        return keep_alive

    async def _generate(
        self, writer: asyncio.StreamWriter, headers: dict[str, str], body: bytes, chat: bool
    ) -> None:
        cfg = self.config
        if cfg.api_key is not None and headers.get("authorization") != f"Bearer {cfg.api_key}":
            await _respond(writer, 401, _error("invalid API key"))
            return
        self.generation_requests += 1
        if cfg.fail_every and self.generation_requests % cfg.fail_every == 0:
            await _respond(writer, 500, _error("injected failure"))
            return
        try:
            request = json.loads(body)
            prompt = (
                " ".join(f"{m['role'].upper()}: {m['content']}" for m in request["messages"])
                if chat
                else str(request["prompt"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            await _respond(writer, 400, _error(f"bad request body: {exc!r}"))
            return
        n = cfg.tokens if cfg.tokens is not None else int(request.get("max_tokens") or 16)
        prompt_tokens = prompt.split()
        self.cache.lookup(prompt_tokens, cfg.block_size, cfg.prefix_caching)
        words = [f"w{i}" for i in range(n)]
        self.cache.insert(prompt_tokens + words, cfg.block_size)
        usage = {
            "prompt_tokens": len(prompt_tokens),
            "completion_tokens": n,
            "total_tokens": len(prompt_tokens) + n,
        }
        if not request.get("stream"):
            await _respond(writer, 200, json.dumps(_full(chat, cfg.model, words, usage)).encode())
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        events = _events(chat, cfg.model, words, usage)
        if cfg.token_delay_s > 0:
            for event in events:
                writer.write(_chunk(event))
                await writer.drain()
                await asyncio.sleep(cfg.token_delay_s)
        else:
            writer.write(b"".join(_chunk(e) for e in events))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    def metrics_text(self) -> str:
        labels = {"engine": "0", "model_name": self.config.model}
        counters = (
            (
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in tokens.",
                self.cache.queries,
            ),
            ("vllm:prefix_cache_hits_total", "Prefix cache hits, in tokens.", self.cache.hits),
        )
        return render(
            Family(name, "counter", text, [Sample(name, labels, float(value))])
            for name, text, value in counters
        )


def _events(chat: bool, model: str, words: list[str], usage: dict[str, int]) -> list[bytes]:
    """SSE events of one streamed answer, vLLM-shaped: tokens, a usage chunk, then [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": "null", "object": kind, "created": 0, "model": model}
    events: list[dict[str, Any]] = []
    if chat:
        events.append({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    for i, word in enumerate(words):
        finish = "length" if i == len(words) - 1 else None
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        choice.update({"delta": {"content": f" {word}"}} if chat else {"text": f" {word}"})
        events.append({**base, "choices": [choice]})
    events.append({**base, "choices": [], "usage": usage})
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def _full(chat: bool, model: str, words: list[str], usage: dict[str, int]) -> dict[str, Any]:
    text = "".join(f" {w}" for w in words)
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    kind = "chat.completion" if chat else "text_completion"
    return {"id": "null", "object": kind, "model": model, "choices": [choice], "usage": usage}


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "null_server"}}).encode()


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json"
) -> None:
    reason = _REASONS.get(status, "Status")
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}"
    writer.write(head.encode() + b"\r\n\r\n" + body)
    await writer.drain()


async def _serve(config: NullServerConfig, port: int) -> None:
    server = NullServer(config)
    await server.start(port=port)
    print(json.dumps({"url": server.url}), flush=True)  # the parent reads the bound port here
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default="null")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per answer (max_tokens)")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    args = parser.parse_args(argv)
    config = NullServerConfig(model=args.model, tokens=args.tokens, token_delay_s=args.token_delay)
    asyncio.run(_serve(config, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
