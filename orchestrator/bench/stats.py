"""Per-request results, percentiles and the report dataclasses that bench and compare emit."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)

# The latency definitions of vllm bench serve (vllm/benchmarks/lib/endpoint_request_func.py and
# calculate_metrics in vllm/benchmarks/serve.py, 0.32), which these follow.
DEFINITIONS = (
    "TTFT = send to the first streamed chunk with choices (text or not); ITL = gaps between "
    "such chunks, all requests pooled; E2E = send to the last such chunk; TPOT = (E2E - TTFT) "
    "/ (output tokens - 1), requests with more than one token; percentiles interpolate "
    "linearly, as vllm bench serve's"
)
DIFFERENCES = (
    "unlike vllm bench serve: a stream that ends without data: [DONE] counts as failed, and "
    "chunk times are taken when the network read returns, not after each chunk is parsed"
)


@dataclass(frozen=True)
class RequestResult:
    """One request as the client saw it; times are seconds from time.perf_counter (monotonic)."""

    ok: bool
    start: float
    e2e_s: float
    ttft_s: float | None = None
    itl_s: tuple[float, ...] = ()
    output_tokens: int = 0
    input_tokens: int | None = None  # from the server's usage; None when it sent none
    estimated_input_tokens: int = 0  # the workload's word-count estimate
    error: str | None = None  # kind: http_<status>, timeout, connection_error, stream_error
    detail: str = ""
    text: str | None = None  # generated text, kept only when the caller asked for it


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks, like numpy's default."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


@dataclass(frozen=True)
class Distribution:
    """Summary of a sample of latencies, in the unit the caller chose."""

    count: int
    mean: float
    min: float
    max: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Iterable[float], scale: float = 1.0) -> Distribution | None:
        """Summarise `values` multiplied by `scale` (1000 for ms); None when there are none."""
        data = sorted(v * scale for v in values)
        if not data:
            return None
        p50, p90, p99 = (percentile(data, q) for q in PERCENTILES)
        return cls(len(data), math.fsum(data) / len(data), data[0], data[-1], p50, p90, p99)


@dataclass(frozen=True)
class LevelReport:
    """Everything measured at one concurrency level (or one Ralph iteration)."""

    concurrency: int
    duration_s: float
    completed: int
    failed: int
    input_tokens: int
    input_tokens_estimated: bool  # True when some server sent no usage and words were counted
    served_input_tokens: tuple[int, int] | None  # min, max prompt tokens in the server's usage
    output_tokens: int
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tokens / s
    total_token_throughput: float  # (input + output tokens) / s
    ttft_ms: Distribution | None
    tpot_ms: Distribution | None  # (e2e - ttft) / (output_tokens - 1) per request
    itl_ms: Distribution | None  # gaps between streamed chunks, all requests pooled
    e2e_s: Distribution | None  # send to the last chunk with choices
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)  # first message per kind


def summarize(results: Sequence[RequestResult], duration_s: float, concurrency: int) -> LevelReport:
    """Aggregate request results measured over `duration_s` seconds of wall time."""
    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    in_tokens = sum(
        r.input_tokens if r.input_tokens is not None else r.estimated_input_tokens for r in done
    )
    out_tokens = sum(r.output_tokens for r in done)
    served = [r.input_tokens for r in done if r.input_tokens is not None]
    errors = Counter(r.error or "unknown" for r in failed)
    examples: dict[str, str] = {}
    for r in failed:
        examples.setdefault(r.error or "unknown", r.detail)
    per_s = 1 / duration_s if duration_s > 0 else 0.0
    return LevelReport(
        concurrency=concurrency,
        duration_s=duration_s,
        completed=len(done),
        failed=len(failed),
        input_tokens=in_tokens,
        input_tokens_estimated=any(r.input_tokens is None for r in done),
        served_input_tokens=(min(served), max(served)) if served else None,
        output_tokens=out_tokens,
        request_throughput=len(done) * per_s,
        output_throughput=out_tokens * per_s,
        total_token_throughput=(in_tokens + out_tokens) * per_s,
        ttft_ms=Distribution.of((r.ttft_s for r in done if r.ttft_s is not None), 1000),
        tpot_ms=Distribution.of(
            (
                (r.e2e_s - r.ttft_s) / (r.output_tokens - 1)
                for r in done
                if r.ttft_s is not None and r.output_tokens > 1
            ),
            1000,
        ),
        itl_ms=Distribution.of((gap for r in done for gap in r.itl_s), 1000),
        e2e_s=Distribution.of(r.e2e_s for r in done),
        errors=dict(sorted(errors.items())),
        error_examples=examples,
    )


@dataclass(frozen=True)
class CacheDelta:
    """Change of vLLM's prefix-cache counters (tokens) over a window; hit rate = hits / queries."""

    queries: float
    hits: float
    hit_rate: float | None = field(init=False)  # None when nothing was queried

    def __post_init__(self) -> None:
        rate = self.hits / self.queries if self.queries > 0 else None
        object.__setattr__(self, "hit_rate", rate)


@dataclass(frozen=True)
class CacheCounters:
    """vllm:prefix_cache_queries_total and _hits_total, each summed over its label sets."""

    queries: float
    hits: float

    def since(self, earlier: CacheCounters) -> CacheDelta:
        return CacheDelta(self.queries - earlier.queries, self.hits - earlier.hits)


@dataclass(frozen=True)
class IterationReport:
    """One lockstep Ralph iteration: every loop sent its transcript once."""

    iteration: int
    level: LevelReport
    cache: CacheDelta | None  # None when the engine's /metrics could not be read


@dataclass
class RalphReport:
    """Per-iteration breakdown of a Ralph run; `cache` covers the whole run once it ends."""

    loops: int
    iterations: list[IterationReport]
    cache: CacheDelta | None  # whole run


@dataclass
class BenchReport:
    """A whole bench run: one LevelReport per concurrency level, or the Ralph breakdown."""

    target: str
    model: str
    endpoint: str
    workload: str
    settings: dict[str, Any]
    levels: list[LevelReport] = field(default_factory=list)
    ralph: RalphReport | None = None
    notes: list[str] = field(default_factory=list)
    input_len: int | None = None  # prompt tokens requested of every random prompt
    refused: str | None = None  # why no numbers are reported
