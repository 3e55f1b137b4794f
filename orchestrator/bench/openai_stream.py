"""Async OpenAI-compatible load generator: one shared aiohttp session, streaming, cheap SSE parsing.

aiohttp, as `vllm bench serve` uses: it costs under a third of httpx's CPU per streamed token,
and on a host whose cores the engine also needs, a client's CPU is taken from the engine
(docs/bench.md).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from orchestrator.bench.stats import CacheCounters, RequestResult
from orchestrator.bench.workloads import Prompt, Workload
from orchestrator.prom_text import parse as parse_metrics

Endpoint = Literal["completions", "chat"]
PATHS: dict[Endpoint, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"


@dataclass(frozen=True)
class Generation:
    """Sampling settings sent with every request."""

    max_tokens: int = 128
    ignore_eos: bool = False
    temperature: float = 0.0


class _StreamError(Exception):
    """The server's event stream was malformed or carried an error event."""


class ServerError(ValueError):
    """A non-streamed call failed: no connection, or an answer other than 200 JSON."""


class OpenAIClient:
    """Streams requests to one OpenAI-compatible server over a pool of kept-alive connections."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        endpoint: Endpoint = "completions",
        api_key: str | None = None,
        max_connections: int = 8,
        timeout_s: float = 300.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use OpenAIClient in `async with`")
        return self._session

    async def __aenter__(self) -> OpenAIClient:
        # Made here, not in __init__: an aiohttp session belongs to the running event loop.
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            connector=aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=self._max_connections
            ),
            timeout=aiohttp.ClientTimeout(total=None, connect=min(self.timeout_s, 10.0)),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    def _body(self, prompt: Prompt, gen: Generation) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": gen.max_tokens,
            "temperature": gen.temperature,
            "stream": True,
            # The final chunk then carries exact token counts, so no tokenizer is needed here.
            "stream_options": {"include_usage": True},
        }
        if gen.ignore_eos:
            body["ignore_eos"] = True  # a vLLM extension; other servers may reject unknown fields
        if self.endpoint == "chat":
            body["messages"] = _messages(prompt)
        else:
            body["prompt"] = prompt.text()
        return body

    async def send(self, prompt: Prompt, gen: Generation, keep_text: bool = False) -> RequestResult:
        """Send one streamed request; server and network failures are reported, not raised."""
        start = time.perf_counter()
        estimate = prompt.estimated_tokens()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._stream(prompt, gen, keep_text, start, estimate)
        except TimeoutError as exc:
            kind, detail = "timeout", f"no complete answer within {self.timeout_s:g} s ({exc!r})"
        except aiohttp.ClientError as exc:
            kind, detail = "connection_error", f"{type(exc).__name__}: {exc}"
        except _StreamError as exc:
            kind, detail = "stream_error", str(exc)
        return _failed(start, estimate, kind, detail)

    async def _stream(
        self, prompt: Prompt, gen: Generation, keep_text: bool, start: float, estimate: int
    ) -> RequestResult:
        answer = _Answer(start, chat=self.endpoint == "chat", keep_text=keep_text)
        body = self._body(prompt, gen)
        async with self.http.post(self.base_url + PATHS[self.endpoint], json=body) as r:
            if r.status != 200:
                text = (await r.read()).decode(errors="replace")
                return _failed(start, estimate, f"http_{r.status}", text[:300])
            events = _SseData()
            async for data in r.content.iter_any():
                now = time.perf_counter()
                for payload in events.feed(data):
                    answer.add(now, payload)
        return answer.result(estimate)

    async def count_tokens(self, prompt: Prompt) -> int:
        """The prompt's length as the engine counts it for this endpoint (vLLM's /tokenize):
        special tokens for completions, the chat template with its generation prompt for chat."""
        body: dict[str, Any] = {"model": self.model}
        if self.endpoint == "chat":
            body["messages"] = _messages(prompt)
            body["add_generation_prompt"] = True
        else:
            body["prompt"] = prompt.text()
        return int((await self._json("POST", f"{self.base_url}/tokenize", body))["count"])

    async def served_model(self) -> str:
        """The first model id the server lists at /v1/models."""
        data = (await self._json("GET", f"{self.base_url}/v1/models")).get("data") or []
        if not data:
            raise ServerError(f"{self.base_url}/v1/models lists no models")
        return str(data[0]["id"])

    async def prefix_cache_counters(self, metrics_url: str) -> CacheCounters | None:
        """Prefix-cache counters summed over the engine's label sets; None when it exposes none."""
        expo = parse_metrics(await self._text("GET", metrics_url))
        queries, hits = expo.total(PREFIX_QUERIES), expo.total(PREFIX_HITS)
        if queries is None or hits is None:
            return None
        return CacheCounters(queries=queries, hits=hits)

    async def _text(self, method: str, url: str, body: dict[str, Any] | None = None) -> str:
        """One short call's answer; ServerError names the URL on any failure."""
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.http.request(method, url, json=body) as r:
                    text = await r.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ServerError(f"{url}: {type(exc).__name__}: {exc}") from None
        if r.status != 200:
            raise ServerError(f"{url} answered {r.status}: {text[:300]}")
        return text

    async def _json(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        text = await self._text(method, url, body)
        try:
            return json.loads(text)
        except ValueError:
            raise ServerError(f"{url} answered no JSON: {text[:200]!r}") from None


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in prompt.messages]


def _failed(start: float, estimate: int, kind: str, detail: str) -> RequestResult:
    return RequestResult(
        ok=False,
        start=start,
        e2e_s=time.perf_counter() - start,
        estimated_input_tokens=estimate,
        error=kind,
        detail=detail,
    )


class _SseData:
    """Payloads of server-sent `data:` lines, from network reads that may split a line."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of the lines this read completed."""
        # Split on newlines once per read, not per line: SSE events are `data: {...}` lines.
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        return [line[5:].strip() for line in lines if line.startswith(b"data:")]


class _Answer:
    """One streamed answer as its events arrive: generation steps, their timing, usage, text."""

    def __init__(self, start: float, *, chat: bool, keep_text: bool) -> None:
        self.start, self.chat, self.keep_text = start, chat, keep_text
        self.first: float | None = None
        self.last = start
        self.gaps: list[float] = []
        self.pieces: list[str] = []
        self.usage: dict[str, Any] = {}
        self.steps = 0
        self.done = False

    def add(self, now: float, payload: bytes) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        event = _load_event(payload)
        if event.get("usage"):
            self.usage = event["usage"]
        if not (choices := event.get("choices")):
            return
        # vllm bench serve's rule (vllm/benchmarks/lib/endpoint_request_func.py, 0.32): every
        # chunk with choices is a step, even one without text (chat's role preamble, a token
        # that decodes to nothing yet); the first sets TTFT, the rest add ITL gaps.
        piece = (
            (choices[0].get("delta") or {}).get("content") if self.chat else choices[0].get("text")
        )
        if self.first is None:
            self.first = now
        else:
            self.gaps.append(now - self.last)
        self.last = now
        self.steps += 1
        if self.keep_text and piece:
            self.pieces.append(piece)

    def result(self, estimate: int) -> RequestResult:
        if not self.done:
            raise _StreamError("the event stream ended without data: [DONE]")
        return RequestResult(
            ok=True,
            start=self.start,
            # As vllm bench serve: the request ends with its last token, not with the usage
            # chunk and [DONE] after it.
            e2e_s=self.last - self.start,
            ttft_s=None if self.first is None else self.first - self.start,
            itl_s=tuple(self.gaps),
            output_tokens=int(self.usage.get("completion_tokens") or self.steps),
            input_tokens=self.usage.get("prompt_tokens"),
            estimated_input_tokens=estimate,
            text="".join(self.pieces) if self.keep_text else None,
        )


def _load_event(payload: bytes) -> dict[str, Any]:
    try:
        event = json.loads(payload)
    except ValueError:
        raise _StreamError(f"not JSON in the event stream: {payload[:200]!r}") from None
    if not isinstance(event, dict):
        raise _StreamError(f"unexpected event in the stream: {payload[:200]!r}")
    if "error" in event:
        raise _StreamError(f"error event: {json.dumps(event['error'])[:300]}")
    return event


async def run_level(
    client: OpenAIClient,
    workload: Workload,
    gen: Generation,
    concurrency: int,
    *,
    requests: int | None = None,
    duration_s: float | None = None,
    first_index: int = 0,
) -> tuple[list[RequestResult], float]:
    """Closed loop: `concurrency` workers send until `requests` were issued or `duration_s` passed.

    Returns the results and the wall time from the first send to the last answer.
    """
    if (requests is None) == (duration_s is None):
        raise ValueError("give exactly one of requests or duration_s")
    results: list[RequestResult] = []
    # Shared by this call's workers; next() cannot interleave under asyncio.
    indices = itertools.count(first_index)
    start = time.perf_counter()
    deadline = None if duration_s is None else start + duration_s

    async def worker() -> None:
        for index in indices:
            if requests is not None and index - first_index >= requests:
                return
            if deadline is not None and time.perf_counter() >= deadline:
                return
            results.append(await client.send(workload.prompt(index), gen))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - start


async def send_all(
    client: OpenAIClient, prompts: Sequence[Prompt], gen: Generation, keep_text: bool = False
) -> tuple[list[RequestResult], float]:
    """Send every prompt at once (one lockstep step); results keep the prompts' order."""
    start = time.perf_counter()
    results = await asyncio.gather(*(client.send(p, gen, keep_text) for p in prompts))
    return list(results), time.perf_counter() - start
