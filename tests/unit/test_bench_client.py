"""The load generator against the in-process null server and scripted raw HTTP answers."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from orchestrator.bench.nullserver import NullServer, NullServerConfig
from orchestrator.bench.openai_stream import Endpoint, Generation, OpenAIClient, run_level, send_all
from orchestrator.bench.report import render_bench
from orchestrator.bench.runner import BenchPlan, Target, new_report, run_bench
from orchestrator.bench.stats import BenchReport, RequestResult
from orchestrator.bench.workloads import BatchWorkload, Prompt, RandomWorkload

HELLO = Prompt((("user", "say hello"),))


@pytest.fixture
async def null() -> AsyncIterator[NullServer]:
    async with NullServer(NullServerConfig(model="tiny")) as server:
        yield server


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_streamed_answer_is_timed_and_counted(null: NullServer, endpoint: Endpoint) -> None:
    async with OpenAIClient(null.url, "tiny", endpoint=endpoint) as client:
        r = await client.send(HELLO, Generation(max_tokens=12), keep_text=True)
    assert r.ok and r.error is None
    assert r.output_tokens == 12 and r.input_tokens is not None and r.input_tokens >= 2
    assert r.ttft_s is not None and 0 < r.ttft_s <= r.e2e_s
    # One gap between each pair of chunks with choices; chat's role preamble is one, as vllm
    # bench serve counts it.
    assert len(r.itl_s) == (11 if endpoint == "completions" else 12)
    assert r.text == "".join(f" w{i}" for i in range(12))


async def test_text_is_not_kept_unless_asked(null: NullServer) -> None:
    async with OpenAIClient(null.url, "tiny") as client:
        r = await client.send(HELLO, Generation(max_tokens=3))
    assert r.ok and r.text is None


async def test_served_model_comes_from_v1_models(null: NullServer) -> None:
    async with OpenAIClient(null.url, "") as client:
        assert await client.served_model() == "tiny"


async def _scripted(chunks: Sequence[bytes], status: int = 200) -> tuple[asyncio.Server, str]:
    """A server that answers every request with `chunks` as chunked-encoded body pieces."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" % status
        )
        for chunk in chunks:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            await asyncio.sleep(0.01)  # separate network reads
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _send_scripted(chunks: Sequence[bytes], status: int = 200) -> RequestResult:
    server, url = await _scripted(chunks, status)
    try:
        async with OpenAIClient(url, "m", timeout_s=5) as client:
            return await client.send(HELLO, Generation(max_tokens=4), keep_text=True)
    finally:
        server.close()


def _event(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "text": text}]}).encode()


async def test_sse_lines_split_across_reads_and_crlf_endings() -> None:
    first, second = _event("a"), _event("b")
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    chunks = [
        b": keep-alive comment\r\n\r\n" + first[:9],
        first[9:] + b"\r\n\r\n" + second + b"\r\n",
        b"\r\ndata: " + usage.encode() + b"\r\n\r\ndata: [DONE]\r\n\r\n",
    ]
    r = await _send_scripted(chunks)
    assert r.ok, r
    assert (r.text, r.output_tokens, r.input_tokens, len(r.itl_s)) == ("ab", 2, 5, 1)


async def test_without_usage_every_generation_chunk_counts_even_without_text() -> None:
    # A token that decodes to no text yet still streams a chunk, as vLLM does mid-character.
    chunks = [_event("x") + b"\n\n", _event("") + b"\n\n", _event("y") + b"\n\ndata: [DONE]\n\n"]
    r = await _send_scripted(chunks)
    assert r.ok and r.output_tokens == 3 and r.input_tokens is None
    assert len(r.itl_s) == 2 and r.text == "xy"


@pytest.mark.parametrize(
    ("chunks", "detail"),
    [
        ([_event("x") + b"\n\n"], "without data: \\[DONE\\]"),
        ([b"data: {not json\n\n"], "not JSON"),
        ([b'data: {"error": {"message": "engine died", "code": 500}}\n\n'], "engine died"),
    ],
)
async def test_broken_streams_are_stream_errors(chunks: list[bytes], detail: str) -> None:
    r = await _send_scripted(chunks)
    assert not r.ok and r.error == "stream_error"
    assert re.search(detail, r.detail)


async def test_http_errors_are_classified_by_status() -> None:
    async with (
        NullServer(NullServerConfig(fail_every=2)) as server,
        OpenAIClient(server.url, "null") as client,
    ):
        results, _ = await run_level(
            client, BatchWorkload(), Generation(max_tokens=2), 1, requests=6
        )
    assert [r.error for r in results] == [None, "http_500", None, "http_500", None, "http_500"]
    assert "injected failure" in results[1].detail


async def test_wrong_api_key_is_http_401_and_right_key_works() -> None:
    async with NullServer(NullServerConfig(api_key="s3cret")) as server:
        async with OpenAIClient(server.url, "null", api_key="nope") as bad:
            assert (await bad.send(HELLO, Generation(max_tokens=2))).error == "http_401"
        async with OpenAIClient(server.url, "null", api_key="s3cret") as good:
            assert (await good.send(HELLO, Generation(max_tokens=2))).ok


async def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        async with OpenAIClient(f"http://127.0.0.1:{port}", "m") as client:
            r = await client.send(HELLO, Generation())
    assert not r.ok and r.error == "connection_error" and "Connect" in r.detail


async def test_slow_answer_is_a_timeout() -> None:
    async with (
        NullServer(NullServerConfig(token_delay_s=0.2)) as server,
        OpenAIClient(server.url, "null", timeout_s=0.3) as client,
    ):
        r = await client.send(HELLO, Generation(max_tokens=10))
    assert not r.ok and r.error == "timeout" and 0.3 <= r.e2e_s < 2


async def test_run_level_sends_exactly_n_or_stops_at_the_deadline(null: NullServer) -> None:
    async with OpenAIClient(null.url, "tiny", max_connections=4) as client:
        results, elapsed = await run_level(
            client, RandomWorkload(words=20), Generation(max_tokens=4), 4, requests=10
        )
        assert len(results) == 10 and all(r.ok for r in results) and elapsed > 0
        timed, elapsed = await run_level(
            client, BatchWorkload(), Generation(max_tokens=4), 2, duration_s=0.3
        )
    assert len(timed) >= 2 and all(r.ok for r in timed)
    assert 0.3 <= elapsed < 2
    with pytest.raises(ValueError, match="exactly one"):
        await run_level(client, BatchWorkload(), Generation(), 1)


def _random_plan(endpoint: Endpoint = "completions", input_len: int = 50) -> BenchPlan:
    return BenchPlan(
        workload="random",
        endpoint=endpoint,
        concurrency=(2,),
        requests=4,
        input_len=input_len,
        gen=Generation(max_tokens=3),
    )


async def _bench(url: str, plan: BenchPlan) -> BenchReport:
    report = new_report(Target(url, "tiny", f"{url}/metrics"), plan)
    await run_bench(Target(url, "tiny", f"{url}/metrics"), plan, report, lambda _: None)
    return report


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_random_prompts_have_exactly_the_tokens_the_server_counts(
    null: NullServer, endpoint: Endpoint
) -> None:
    # The null server counts words as tokens; its chat rendering adds one ("USER:").
    report = await _bench(null.url, _random_plan(endpoint))
    level = report.levels[0]
    assert level.served_input_tokens == (50, 50) and level.input_tokens == 4 * 50
    fixed = 0 if endpoint == "completions" else 1
    assert any(f"({fixed} of them" in note for note in report.notes), report.notes
    text = render_bench(report)
    assert "prompt tokens: requested 50, served 50 (engine's usage)" in text
    assert "definitions: TTFT = send to the first streamed chunk" in text
    assert "unlike vllm bench serve: a stream that ends without data: [DONE]" in text


class _TokenizeAddsTwo(NullServer):
    """Its /tokenize counts two tokens more than generation serves; sizing trusts that count."""

    async def _tokenize(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        count = len(json.loads(body)["prompt"].split()) + 2
        answer = json.dumps({"count": count, "max_model_len": 4096, "tokens": []}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()


async def test_a_run_whose_served_prompts_differ_from_the_request_is_refused() -> None:
    async with _TokenizeAddsTwo(NullServerConfig(model="tiny")) as server:
        report = await _bench(server.url, _random_plan())
    assert report.levels == []
    assert report.refused is not None and "requested 50 prompt tokens, the engine served 48-48" in (
        report.refused
    )
    text = render_bench(report)
    assert text.splitlines()[2].startswith("REFUSED: requested 50") and "TTFT" not in text


async def test_an_input_len_below_the_chat_template_is_refused(null: NullServer) -> None:
    report = await _bench(null.url, _random_plan("chat", input_len=1))
    assert report.refused is not None and "leaves no room for content" in report.refused


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workload": "bursty"}, "workload must be one of batch, random, ralph"),
        ({"requests": None}, "exactly one of --requests and --duration"),
        ({"duration_s": 5.0}, "exactly one of --requests and --duration"),
        ({"concurrency": (4, 0)}, "positive integers"),
        ({"gen": Generation(max_tokens=0)}, "--max-tokens must be positive, got 0"),
        ({"requests": -1}, "--requests must be positive"),
        ({"warmup": -2}, "--warmup must not be negative"),
    ],
)
def test_bad_plans_are_refused_naming_the_option(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        BenchPlan(**{"requests": 8, **changes})


async def test_send_all_keeps_prompt_order(null: NullServer) -> None:
    prompts = [Prompt((("user", "a " * n),)) for n in (3, 30, 7)]
    async with OpenAIClient(null.url, "tiny") as client:
        results, _ = await send_all(client, prompts, Generation(max_tokens=2))
    assert [r.input_tokens for r in results] == [3, 30, 7]


async def test_prefix_cache_counters_sum_over_engines() -> None:
    metrics = (
        "# TYPE vllm:prefix_cache_queries_total counter\n"
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0\n'
        'vllm:prefix_cache_queries_total{engine="1",model_name="m"} 50.0\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 40.0\n'
        'vllm:prefix_cache_hits_total{engine="1",model_name="m"} 20.0\n'
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = metrics.encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with OpenAIClient(url, "m") as client:
        counters = await client.prefix_cache_counters(f"{url}/metrics")
    server.close()
    assert counters is not None and (counters.queries, counters.hits) == (150.0, 60.0)


async def _ralph(caching: bool) -> tuple[NullServer, BenchReport]:
    plan = BenchPlan(workload="ralph", loops=3, iterations=4, gen=Generation(max_tokens=24))
    async with NullServer(NullServerConfig(prefix_caching=caching)) as server:
        target = Target(server.url, "null", f"{server.url}/metrics")
        report = new_report(target, plan)
        await run_bench(target, plan, report, lambda _: None)
    return server, report


async def test_ralph_hit_rate_is_computed_from_metric_deltas_per_iteration() -> None:
    server, report = await _ralph(caching=True)
    ralph = report.ralph
    assert ralph is not None and ralph.cache is not None and len(ralph.iterations) == 4
    # The run's delta is exactly what the server's counters moved by (they started at zero).
    assert (ralph.cache.queries, ralph.cache.hits) == (server.cache.queries, server.cache.hits)
    deltas = [it.cache for it in ralph.iterations if it.cache is not None]
    assert len(deltas) == 4 and sum(c.queries for c in deltas) == server.cache.queries
    rates = [c.hit_rate or 0.0 for c in deltas]
    # Iteration 1 shares only the instruction between loops; later ones re-send a cached transcript.
    assert 0 < rates[0] < rates[1]
    assert all(rate > 0.9 for rate in rates[1:])
    assert all(it.level.completed == 3 and it.level.ttft_ms for it in ralph.iterations)
    # Transcripts grow: each iteration queries more tokens than the one before.
    queried = [c.queries for c in deltas]
    assert queried == sorted(queried) and len(set(queried)) == 4
    assert report.levels[0].completed == 12


async def test_ralph_without_prefix_caching_has_no_hits_and_says_why() -> None:
    # Like vLLM, the null server counts neither queries nor hits when caching is off.
    _, report = await _ralph(caching=False)
    assert report.ralph is not None and report.ralph.cache is not None
    assert (report.ralph.cache.queries, report.ralph.cache.hits) == (0, 0)
    assert report.ralph.cache.hit_rate is None
    assert all(it.cache and it.cache.hits == 0 for it in report.ralph.iterations)
    assert "prefix caching is off" in " ".join(report.notes)


async def test_ralph_without_metrics_reports_no_hit_rate_and_says_why() -> None:
    plan = BenchPlan(workload="ralph", loops=1, iterations=2, gen=Generation(max_tokens=4))
    async with NullServer() as server:
        target = Target(server.url, "null", f"{server.url}/no-metrics-here")
        report = new_report(target, plan)
        await run_bench(target, plan, report, lambda _: None)
    assert report.ralph is not None and report.ralph.cache is None
    assert all(it.cache is None for it in report.ralph.iterations)
    assert any("cannot read prefix-cache counters" in n and "404" in n for n in report.notes)


async def test_ralph_table_has_a_row_per_iteration_and_one_for_the_whole_run() -> None:
    _, report = await _ralph(caching=True)
    assert report.ralph is not None and report.ralph.cache is not None
    lines = render_bench(report).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ITER "))
    rows = [line.split() for line in lines[start + 1 : start + 6]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "all"]
    assert rows[-1][1:4] == ["12", "0", f"{report.ralph.cache.hit_rate:.1%}"]
    assert rows[-1][4:6] == [f"{report.ralph.cache.queries:.0f}", f"{report.ralph.cache.hits:.0f}"]
