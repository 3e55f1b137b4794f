"""Per-model numbers from each engine's own vLLM /metrics, read only while a dashboard looks.

An engine is scraped when a viewer asks and its last reading is older than what that view
tolerates; readings of the last minute give the recent rates. Nobody looking: no scrape at all.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator import prom_text
from orchestrator.engine.lifecycle import Engine, State
from orchestrator.http.metrics import scrape

TTFT = "vllm:time_to_first_token_seconds"
_COUNTERS = {
    "prompt_tokens": "vllm:prompt_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "requests": "vllm:request_success_total",
    "prefix_hits": "vllm:prefix_cache_hits_total",
    "prefix_queries": "vllm:prefix_cache_queries_total",
}
# vLLM's page is ~400 lines; only these are parsed (a plain prefix test is cheap, the parser not).
_WANTED = (*(f"{n}{{" for n in _COUNTERS.values()), f"{TTFT}_")


@dataclass(frozen=True)
class Reading:
    """The counters of one scrape; `at` is monotonic time."""

    at: float
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    requests: float = 0.0
    prefix_hits: float = 0.0
    prefix_queries: float = 0.0
    ttft: prom_text.Histogram | None = None

    def counters(self) -> tuple[float, ...]:
        return (
            self.prompt_tokens,
            self.generation_tokens,
            self.requests,
            self.prefix_hits,
            self.prefix_queries,
        )


def parse_reading(text: str, at: float) -> Reading:
    """The counters the dashboard shows, summed over label sets; absent ones read 0."""
    expo = prom_text.parse("\n".join(ln for ln in text.splitlines() if ln.startswith(_WANTED)))
    values = {k: expo.total(name) or 0.0 for k, name in _COUNTERS.items()}
    return Reading(at=at, ttft=expo.histogram(TTFT), **values)


@dataclass(frozen=True)
class Numbers:
    """What the page shows for one engine. Totals count since the engine process started."""

    prompt_tokens: int
    generation_tokens: int
    requests: int
    hit_rate: float | None  # prefix-cache hits / queries since start
    window_s: float | None  # span of the recent figures; None until two readings exist
    generation_tps: float | None
    requests_per_s: float | None
    hit_rate_recent: float | None
    ttft_p50_s: float | None
    ttft_scope: str | None  # "recent" when requests finished in the window, else "all"


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def numbers(readings: Sequence[Reading]) -> Numbers:
    """Totals from the newest reading; rates between the oldest and the newest."""
    last = readings[-1]
    first = readings[0]
    span = last.at - first.at
    recent = span >= 0.5
    ttft_p50, scope = None, None
    if last.ttft is not None:
        window = last.ttft.since(first.ttft) if recent and first.ttft is not None else None
        if window is not None and window.count > 0:
            ttft_p50, scope = window.quantile(0.5), "recent"
        elif last.ttft.count > 0:
            ttft_p50, scope = last.ttft.quantile(0.5), "all"
    return Numbers(
        prompt_tokens=int(last.prompt_tokens),
        generation_tokens=int(last.generation_tokens),
        requests=int(last.requests),
        hit_rate=_ratio(last.prefix_hits, last.prefix_queries),
        window_s=round(span, 1) if recent else None,
        generation_tps=(last.generation_tokens - first.generation_tokens) / span
        if recent
        else None,
        requests_per_s=(last.requests - first.requests) / span if recent else None,
        hit_rate_recent=(
            _ratio(last.prefix_hits - first.prefix_hits, last.prefix_queries - first.prefix_queries)
            if recent
            else None
        ),
        ttft_p50_s=ttft_p50 if ttft_p50 is None or math.isfinite(ttft_p50) else None,
        ttft_scope=scope,
    )


@dataclass
class _Track:
    pid: int
    readings: deque[Reading] = field(default_factory=deque)
    pending: asyncio.Task[Reading | None] | None = None


class EngineStats:
    """Scrapes on demand, shares one scrape between concurrent viewers, keeps `window_s`."""

    def __init__(self, timeout_s: float, window_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.window_s = window_s
        self._tracks: weakref.WeakKeyDictionary[Engine, _Track] = weakref.WeakKeyDictionary()

    async def get(self, e: Engine, max_age_s: float) -> Numbers | None:
        """The engine's numbers, from a reading at most `max_age_s` old; None when not serving."""
        st = e.status()
        if st.state not in (State.READY, State.UNHEALTHY) or st.pid is None:
            self._tracks.pop(e, None)
            return None
        track = self._tracks.get(e)
        if track is None or track.pid != st.pid:  # a new engine process: counters restart
            track = self._tracks[e] = _Track(st.pid)
        now = time.monotonic()
        if not track.readings or now - track.readings[-1].at > max_age_s:
            if track.pending is None:
                track.pending = asyncio.create_task(self._scrape(e))
                track.pending.add_done_callback(lambda _: setattr(track, "pending", None))
            got = await asyncio.shield(track.pending)
            if got is not None and (not track.readings or got.at > track.readings[-1].at):
                self._add(track, got)
        return numbers(track.readings) if track.readings else None

    def _add(self, track: _Track, r: Reading) -> None:
        old = track.readings
        if old and any(a < b for a, b in zip(r.counters(), old[-1].counters(), strict=True)):
            old.clear()  # counters went back: not the same engine life
        old.append(r)
        while len(old) > 1 and r.at - old[0].at > self.window_s:
            old.popleft()

    async def _scrape(self, e: Engine) -> Reading | None:
        text = await scrape(e, self.timeout_s)
        try:
            return None if text is None else parse_reading(text, time.monotonic())
        except prom_text.PromTextError:
            return None
