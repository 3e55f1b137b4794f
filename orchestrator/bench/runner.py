"""Run a bench plan against one target: a concurrency sweep, or Ralph loops in lockstep."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.bench.openai_stream import (
    Endpoint,
    Generation,
    OpenAIClient,
    ServerError,
    run_level,
    send_all,
)
from orchestrator.bench.sized_prompts import SizingError, sized_workload
from orchestrator.bench.stats import (
    BenchReport,
    CacheCounters,
    IterationReport,
    LevelReport,
    RalphReport,
    RequestResult,
    summarize,
)
from orchestrator.bench.workloads import BatchWorkload, RalphLoop, Workload

WORKLOADS = ("batch", "random", "ralph")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where requests go: an engine's OpenAI base URL, the name it serves, and its /metrics."""

    base_url: str
    served_model: str
    metrics_url: str
    api_key: str | None = None

    @classmethod
    def from_status(
        cls, status: Mapping[str, Any], api_key: str | None = None, metrics_url: str | None = None
    ) -> Target:
        """From a control-plane ModelStatus (endpoint, served_model_name)."""
        # The daemon publishes the OpenAI base URL (`http://host:port/v1`); /metrics is at the root.
        base = str(status["endpoint"]).rstrip("/").removesuffix("/v1")
        served = status.get("served_model_name") or status["name"]
        return cls(base, str(served), metrics_url or f"{base}/metrics", api_key)


@dataclass(frozen=True)
class BenchPlan:
    """What to send and how hard: the same plan runs against every variant of a compare."""

    workload: str = "batch"
    endpoint: Endpoint = "completions"
    concurrency: tuple[int, ...] = (1,)
    requests: int | None = None  # per level; exactly one of requests and duration_s
    duration_s: float | None = None
    gen: Generation = field(default_factory=Generation)
    input_len: int = 256  # random workload: prompt tokens as the engine counts them
    seed: int = 0
    loops: int = 4  # ralph
    iterations: int = 5  # ralph
    warmup: int = 0  # unmeasured requests before the first level
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(
                f"workload must be one of {', '.join(WORKLOADS)}, not {self.workload!r}"
            )
        if self.workload != "ralph" and (self.requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of --requests and --duration")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("concurrency levels must be positive integers")
        positive = {
            "--requests": self.requests,
            "--duration": self.duration_s,
            "--max-tokens": self.gen.max_tokens,
            "--input-len": self.input_len,
            "--loops": self.loops,
            "--iterations": self.iterations,
            "--timeout": self.timeout_s,
        }
        for option, value in positive.items():
            if value is not None and value <= 0:
                raise ValueError(f"{option} must be positive, got {value}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must not be negative, got {self.warmup}")

    def settings(self) -> dict[str, Any]:
        """The plan as plain JSON-able values, for the report."""
        out = {k: v for k, v in self.__dict__.items() if k != "gen"}
        out.update(self.gen.__dict__)
        out["concurrency"] = list(self.concurrency)
        return out


async def run_bench(
    target: Target, plan: BenchPlan, report: BenchReport, progress: Progress
) -> None:
    """Fill `report` level by level, so an interrupted run still has what finished."""
    pool = plan.loops if plan.workload == "ralph" else max(plan.concurrency)
    async with OpenAIClient(
        target.base_url,
        target.served_model,
        endpoint=plan.endpoint,
        api_key=target.api_key,
        max_connections=pool,
        timeout_s=plan.timeout_s,
    ) as client:
        if plan.workload == "ralph":
            await _run_ralph(client, target.metrics_url, plan, report, progress)
            return
        workload: Workload = BatchWorkload()
        if plan.workload == "random":
            sized = await _sized_random(client, plan, report)
            if sized is None:
                return
            workload = sized
        index = 0
        if plan.warmup:
            await run_level(client, workload, plan.gen, max(plan.concurrency), requests=plan.warmup)
            index = plan.warmup
        for level in plan.concurrency:
            progress(f"concurrency {level}: sending")
            results, elapsed = await run_level(
                client,
                workload,
                plan.gen,
                level,
                requests=plan.requests,
                duration_s=plan.duration_s,
                first_index=index,
            )
            index += len(results)  # random prompts stay distinct across levels
            summary = summarize(results, elapsed, level)
            if _served_differs(report, summary):
                return
            report.levels.append(summary)
            progress(
                f"concurrency {level}: {summary.completed} ok, {summary.failed} failed, "
                f"{summary.request_throughput:.2f} req/s, {summary.output_throughput:.1f} tok/s"
            )


async def _run_ralph(
    client: OpenAIClient, metrics_url: str, plan: BenchPlan, report: BenchReport, progress: Progress
) -> None:
    """Loops advance in lockstep, so counter deltas between iterations belong to one iteration."""

    async def counters() -> CacheCounters | None:
        try:
            found = await client.prefix_cache_counters(metrics_url)
        except ServerError as exc:
            _note(report, f"cannot read prefix-cache counters from {metrics_url}: {exc}")
            return None
        if found is None:
            _note(report, f"{metrics_url} has no vllm:prefix_cache_* counters")
        return found

    loops = [RalphLoop(i) for i in range(plan.loops)]
    ralph = RalphReport(loops=plan.loops, iterations=[], cache=None)
    report.ralph = ralph
    first = previous = await counters()
    everything: list[RequestResult] = []
    elapsed_total = 0.0
    for iteration in range(1, plan.iterations + 1):
        results, elapsed = await send_all(client, [loop.prompt() for loop in loops], plan.gen, True)
        for loop, result in zip(loops, results, strict=True):
            loop.advance(result.text if result.ok else None)
        now = await counters()
        cache = now.since(previous) if now and previous else None
        ralph.iterations.append(
            IterationReport(iteration, summarize(results, elapsed, len(loops)), cache)
        )
        previous = now
        everything += results
        elapsed_total += elapsed
        rate = "n/a" if cache is None or cache.hit_rate is None else f"{cache.hit_rate:.1%}"
        progress(f"ralph iteration {iteration}/{plan.iterations}: prefix-cache hit rate {rate}")
    ralph.cache = previous.since(first) if previous and first else None
    report.levels.append(summarize(everything, elapsed_total, len(loops)))
    if ralph.cache is not None and ralph.cache.queries == 0 and report.levels[0].completed:
        _note(report, "the engine counted no prefix-cache queries: its prefix caching is off")


async def _sized_random(
    client: OpenAIClient, plan: BenchPlan, report: BenchReport
) -> Workload | None:
    """Prompts of exactly --input-len tokens by the engine's /tokenize; None (and the run
    refused) when the engine cannot count them or they cannot be built."""
    try:
        workload, sizing = await sized_workload(client.count_tokens, plan.input_len, plan.seed)
    except (SizingError, ServerError, KeyError) as exc:
        report.refused = f"cannot make prompts of exactly {plan.input_len} tokens: {exc}"
        return None
    report.input_len = plan.input_len
    around = "the chat template" if plan.endpoint == "chat" else "special tokens"
    _note(
        report,
        f"random prompts: {plan.input_len} tokens each by the engine's /tokenize "
        f"({sizing.fixed} of them {around}, the rest {len(sizing.vocabulary)} one-token words)",
    )
    return workload


def _served_differs(report: BenchReport, level: LevelReport) -> bool:
    """Refuse the run when the engine served other prompt lengths than were requested."""
    if report.input_len is None or level.served_input_tokens is None:
        return False
    low, high = level.served_input_tokens
    if low == high == report.input_len:
        return False
    report.refused = (
        f"requested {report.input_len} prompt tokens, the engine served {low}-{high} "
        f"(its usage) at concurrency {level.concurrency}; no numbers for a different workload"
    )
    return True


def _note(report: BenchReport, text: str) -> None:
    if text not in report.notes:
        report.notes.append(text)


def new_report(target: Target, plan: BenchPlan) -> BenchReport:
    return BenchReport(
        target=target.base_url,
        model=target.served_model,
        endpoint=plan.endpoint,
        workload=plan.workload,
        settings=plan.settings(),
    )
