"""Engine numbers for the dashboard: parsing vLLM's page, rates, TTFT p50, scraping on demand."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from orchestrator import prom_text
from orchestrator.engine.lifecycle import State
from orchestrator.http.dashboard.engine_stats import EngineStats, Reading, numbers, parse_reading

L = 'engine="0",model_name="m"'
BOUNDS = (0.01, 0.1, 1.0)


def page(prompt: int, gen: int, ok: int, hits: int, queries: int, ttft: tuple[int, ...]) -> str:
    """A vLLM-like /metrics page; ttft = cumulative counts for BOUNDS, then +Inf."""
    lines = [
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{L}}} {prompt}.0",
        f"vllm:prompt_tokens_cached_total{{{L}}} 999.0",  # a longer name sharing the prefix
        f"vllm:generation_tokens_total{{{L}}} {gen}.0",
        f'vllm:request_success_total{{finished_reason="stop",{L}}} {ok - 1}.0',
        f'vllm:request_success_total{{finished_reason="length",{L}}} 1.0',
        f"vllm:prefix_cache_hits_total{{{L}}} {hits}.0",
        f"vllm:prefix_cache_queries_total{{{L}}} {queries}.0",
        f"vllm:num_requests_running{{{L}}} 3.0",
        "# TYPE vllm:time_to_first_token_seconds histogram",
    ]
    for le, n in zip((*map(str, BOUNDS), "+Inf"), ttft, strict=True):
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{{L},le="{le}"}} {n}.0')
    lines.append(f"vllm:time_to_first_token_seconds_count{{{L}}} {ttft[-1]}.0")
    lines.append(f"vllm:time_to_first_token_seconds_sum{{{L}}} 1.5")
    return "\n".join(lines) + "\n"


def test_parse_reads_the_counters_and_skips_lookalikes() -> None:
    r = parse_reading(page(100, 40, 5, 30, 90, (1, 4, 5, 5)), at=7.0)
    assert (r.prompt_tokens, r.generation_tokens, r.requests) == (100, 40, 5)
    assert (r.prefix_hits, r.prefix_queries, r.at) == (30, 90, 7.0)
    assert r.ttft is not None and r.ttft.count == 5
    assert parse_reading("", at=0.0) == Reading(at=0.0)  # --disable-log-stats: nothing


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    h = prom_text.Histogram(((0.01, 1.0), (0.1, 4.0), (1.0, 5.0), (float("inf"), 5.0)), 1.5, 5.0)
    # rank 2.5 of 5 lies in (0.01, 0.1], which holds observations 2-4: halfway through.
    assert h.quantile(0.5) == pytest.approx(0.01 + 0.09 * (2.5 - 1) / 3)
    assert h.quantile(0.1) == pytest.approx(0.005)  # first bucket: from 0
    tail = prom_text.Histogram(((0.1, 1.0), (float("inf"), 4.0)), 9.0, 4.0)
    assert tail.quantile(0.9) == 0.1  # beyond the last finite bound: that bound
    assert prom_text.Histogram(((0.1, 0.0), (float("inf"), 0.0)), 0.0, 0.0).quantile(0.5) is None
    delta = h.since(prom_text.Histogram(((0.01, 1.0), (0.1, 1.0), (1.0, 1.0)), 0.5, 1.0))
    assert delta.buckets[:3] == ((0.01, 0.0), (0.1, 3.0), (1.0, 4.0)) and delta.count == 4.0


def test_numbers_give_totals_and_recent_rates() -> None:
    a = parse_reading(page(100, 40, 5, 30, 90, (1, 4, 5, 5)), at=10.0)
    b = parse_reading(page(300, 140, 9, 130, 290, (1, 4, 9, 9)), at=20.0)
    one = numbers([a])
    assert (one.requests, one.generation_tokens, one.window_s, one.generation_tps) == (
        5,
        40,
        None,
        None,
    )
    assert one.hit_rate == pytest.approx(30 / 90)
    assert one.ttft_scope == "all"  # one reading: the engine's whole life
    n = numbers([a, b])
    assert (n.prompt_tokens, n.generation_tokens, n.requests) == (300, 140, 9)
    assert n.window_s == 10.0
    assert n.generation_tps == pytest.approx(10.0) and n.requests_per_s == pytest.approx(0.4)
    assert n.hit_rate_recent == pytest.approx(100 / 200)
    # The 4 requests of the window all took (0.1, 1] s: the recent p50 ignores the older ones.
    assert n.ttft_scope == "recent" and n.ttft_p50_s == pytest.approx(0.1 + 0.9 * 2 / 4)
    idle = numbers([b, parse_reading(page(300, 140, 9, 130, 290, (1, 4, 9, 9)), at=30.0)])
    assert idle.generation_tps == 0 and idle.hit_rate_recent is None
    assert idle.ttft_scope == "all"  # nothing finished lately: the lifetime p50 instead


class FakeEngine:
    def __init__(self, port: int, pid: int = 1) -> None:
        self.state = State.READY
        self.pid = pid
        self.spec = SimpleNamespace(probe_host="127.0.0.1", port=port)

    def status(self) -> SimpleNamespace:
        return SimpleNamespace(state=self.state, pid=self.pid)


async def metrics_server(texts: list[str]) -> tuple[asyncio.Server, int, list[int]]:
    """Answers /metrics with texts[0] (tests change it); counts requests in hits[0]."""
    hits = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        hits[0] += 1
        await asyncio.sleep(0.05)  # slow enough for concurrent viewers to overlap
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + texts[0].encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], hits


async def test_engines_are_scraped_only_when_asked_and_shared_between_viewers() -> None:
    texts = [page(100, 40, 5, 30, 90, (1, 4, 5, 5))]
    server, port, hits = await metrics_server(texts)
    async with server:
        stats = EngineStats(timeout_s=2.0)
        e = FakeEngine(port)
        got = await asyncio.gather(*(stats.get(e, max_age_s=5.0) for _ in range(5)))
        assert hits[0] == 1 and all(g == got[0] for g in got)
        assert got[0] is not None and got[0].requests == 5
        await stats.get(e, max_age_s=5.0)
        assert hits[0] == 1  # fresh enough: no second scrape
        texts[0] = page(300, 140, 9, 130, 290, (1, 4, 9, 9))
        later = await stats.get(e, max_age_s=0.0)
        assert hits[0] == 2 and later is not None and later.requests == 9
        assert later.window_s is None  # readings 0.05 s apart are too close to make a rate
        # A new engine process starts from scratch: its counters are not compared with the old.
        e.pid = 2
        texts[0] = page(10, 4, 1, 0, 10, (1, 1, 1, 1))
        fresh = await stats.get(e, max_age_s=5.0)
        assert fresh is not None and fresh.requests == 1 and fresh.window_s is None
        e.state = State.STOPPED
        assert await stats.get(e, max_age_s=0.0) is None
        assert hits[0] == 3  # a stopped engine is not asked


async def test_an_engine_that_does_not_answer_gives_no_numbers() -> None:
    server, port, _ = await metrics_server([""])
    port_closed = port
    server.close()
    await server.wait_closed()
    assert await EngineStats(timeout_s=0.5).get(FakeEngine(port_closed), max_age_s=0) is None
