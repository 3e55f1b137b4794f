"""Chat completion calls with a concurrency limit per endpoint, retries, and classified errors."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from orchestrator.evaluation.endpoints import Endpoint

# A 400 is about this one request (say, a prompt over max_model_len): the model goes on.
REQUEST_ERRORS = frozenset({400, 413, 422})
RETRY_AFTER_CAP_S = 60.0


@dataclass(frozen=True)
class Sampling:
    """Generation settings sent with every call, and recorded with the run."""

    temperature: float = 0.0
    max_tokens: int = 512
    seed: int = 0
    top_p: float = 1.0

    def body(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "top_p": self.top_p,
        }


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float


class CallError(Exception):
    """A call that failed; `fatal` says the model cannot answer anything (down, refused, gone)."""

    def __init__(self, reason: str, fatal: bool, retry_after_s: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        self.retry_after_s = retry_after_s


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        msg = r.text
    return f"HTTP {r.status_code}: {str(msg)[:300]}"


def _retry_after(r: httpx.Response) -> float:
    """A rate limiter's Retry-After (seconds form), capped; 0 when absent."""
    try:
        return min(float(r.headers.get("retry-after", 0)), RETRY_AFTER_CAP_S)
    except ValueError:
        return 0.0


@dataclass
class ChatPool:
    """One HTTP client per base URL; at most `concurrency` calls in flight per endpoint."""

    concurrency: int
    timeout_s: float
    api_key: str | None = None
    retries: int = 2
    _clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    _limits: dict[tuple[str, str], asyncio.Semaphore] = field(default_factory=dict)

    def http(self, base_url: str) -> httpx.AsyncClient:
        if base_url not in self._clients:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._clients[base_url] = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
                trust_env=False,
            )
        return self._clients[base_url]

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()

    def set_limit(self, ep: Endpoint, concurrency: int) -> None:
        """A limit other than the default for one endpoint (the judge's, say)."""
        self._limits[(ep.base_url, ep.model)] = asyncio.Semaphore(concurrency)

    def _limit(self, ep: Endpoint) -> asyncio.Semaphore:
        key = (ep.base_url, ep.model)
        if key not in self._limits:
            self._limits[key] = asyncio.Semaphore(self.concurrency)
        return self._limits[key]

    async def chat(
        self, ep: Endpoint, messages: list[dict[str, str]], sampling: Sampling, **extra: Any
    ) -> Reply:
        body = {"model": ep.model, "messages": messages, **sampling.body(), **extra}
        async with self._limit(ep):
            for attempt in range(self.retries + 1):
                try:
                    return await self._once(ep, body)
                except CallError as exc:
                    if not exc.fatal or attempt == self.retries:
                        raise
                    await asyncio.sleep(max(0.5 * 2**attempt, exc.retry_after_s))
        raise AssertionError("unreachable")

    async def _once(self, ep: Endpoint, body: dict[str, Any]) -> Reply:
        start = time.monotonic()
        try:
            r = await self.http(ep.base_url).post(f"{ep.base_url}/chat/completions", json=body)
        except httpx.TimeoutException:
            raise CallError(f"timed out after {self.timeout_s:g}s", fatal=True) from None
        except httpx.HTTPError as exc:
            raise CallError(f"{type(exc).__name__}: {exc}", fatal=True) from None
        if r.status_code >= 400:
            fatal = r.status_code not in REQUEST_ERRORS
            raise CallError(_error_text(r), fatal=fatal, retry_after_s=_retry_after(r))
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise CallError(f"malformed reply: {r.text[:200]}", fatal=False) from None
        usage = data.get("usage") or {}
        return Reply(
            text,
            choice.get("finish_reason"),
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            time.monotonic() - start,
        )
