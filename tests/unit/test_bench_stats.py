"""Percentiles, per-level aggregation and prefix-cache deltas."""

from __future__ import annotations

import random

import numpy as np
import pytest

from orchestrator.bench.stats import (
    CacheCounters,
    Distribution,
    RequestResult,
    percentile,
    summarize,
)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_percentile_matches_numpy_on_random_samples() -> None:
    rng = random.Random(7)
    for size in (1, 2, 5, 99, 1000):
        data = sorted(rng.expovariate(1.0) for _ in range(size))
        for q in (1, 50, 90, 99, 99.9):
            assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))


def test_distribution_scales_and_summarises() -> None:
    d = Distribution.of([0.003, 0.001, 0.002], scale=1000)
    assert d is not None
    assert (d.count, d.min, d.max, d.p50) == (3, 1.0, 3.0, 2.0)
    assert d.mean == pytest.approx(2.0)
    assert Distribution.of([]) is None


def _ok(ttft: float, e2e: float, out: int, prompt: int | None = 10) -> RequestResult:
    gaps = tuple([(e2e - ttft) / (out - 1)] * (out - 1)) if out > 1 else ()
    return RequestResult(
        ok=True,
        start=0.0,
        e2e_s=e2e,
        ttft_s=ttft,
        itl_s=gaps,
        output_tokens=out,
        input_tokens=prompt,
        estimated_input_tokens=8,
    )


def _failed(kind: str, detail: str) -> RequestResult:
    return RequestResult(ok=False, start=0.0, e2e_s=0.5, error=kind, detail=detail)


def test_summarize_counts_throughput_latency_and_errors() -> None:
    results = [
        _ok(0.1, 1.1, 11),
        _ok(0.3, 2.3, 21),
        _ok(0.2, 0.2, 1, prompt=None),  # no usage from the server: the word estimate counts
        _failed("http_500", "boom"),
        _failed("http_500", "boom again"),
        _failed("timeout", "slow"),
    ]
    level = summarize(results, duration_s=4.0, concurrency=3)
    assert (level.completed, level.failed, level.concurrency) == (3, 3, 3)
    assert level.output_tokens == 33
    assert level.input_tokens == 10 + 10 + 8
    assert level.input_tokens_estimated
    assert level.request_throughput == pytest.approx(0.75)
    assert level.output_throughput == pytest.approx(33 / 4)
    assert level.total_token_throughput == pytest.approx((33 + 28) / 4)
    assert level.ttft_ms is not None and level.ttft_ms.p50 == pytest.approx(200.0)
    assert level.tpot_ms is not None and level.tpot_ms.count == 2
    assert level.tpot_ms.min == pytest.approx(100.0)
    assert level.itl_ms is not None and level.itl_ms.count == 30
    assert level.errors == {"http_500": 2, "timeout": 1}
    assert level.error_examples == {"http_500": "boom", "timeout": "slow"}


def test_summarize_of_only_failures_has_no_latencies() -> None:
    level = summarize([_failed("connection_error", "refused")], duration_s=1.0, concurrency=1)
    assert level.completed == 0 and level.request_throughput == 0.0
    assert level.ttft_ms is None and level.e2e_s is None and not level.input_tokens_estimated


def test_hit_rate_is_delta_hits_over_delta_queries() -> None:
    before, after = CacheCounters(queries=1000, hits=200), CacheCounters(queries=1600, hits=680)
    delta = after.since(before)
    assert (delta.queries, delta.hits) == (600, 480)
    assert delta.hit_rate == pytest.approx(0.8)
    assert after.since(after).hit_rate is None
