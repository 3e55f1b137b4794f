"""`mig-orchestrator bench` and `mig-orchestrator compare`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from orchestrator.bench.compare import (
    CompareReport,
    ThreadedControl,
    VariantError,
    parse_variant,
    run_compare,
    sweep_variants,
)
from orchestrator.bench.openai_stream import Generation, OpenAIClient, ServerError
from orchestrator.bench.report import render_bench, render_compare, to_json
from orchestrator.bench.runner import (
    WORKLOADS,
    BenchPlan,
    Progress,
    Target,
    new_report,
    run_bench,
)
from orchestrator.bench.stats import BenchReport
from orchestrator.client import (
    ControlClient,
    ControlError,
    add_daemon_options,
    resolve_token,
)

EXIT_INTERRUPTED = 130


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"want positive integers, got {text!r}")
    return levels


def _add_workload_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--workload", choices=WORKLOADS, default="batch", help="default %(default)s")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    g.add_argument(
        "--concurrency",
        type=_levels,
        default=(1, 2, 4, 8),
        metavar="N[,N...]",
        help="in-flight requests; a list sweeps (default 1,2,4,8)",
    )
    amount = g.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=int, help="requests per level (default 32)")
    amount.add_argument("--duration", type=float, metavar="S", help="seconds per level")
    g.add_argument("--warmup", type=int, default=0, help="unmeasured requests first")
    g.add_argument("--max-tokens", type=int, default=128, help="default %(default)s")
    g.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="generate exactly --max-tokens (default: on for random, off otherwise)",
    )
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument(
        "--input-len",
        type=int,
        default=256,
        help="random: prompt tokens as the engine counts them (its /tokenize; chat: with the "
        "template); the run is refused if the engine serves any other length",
    )
    g.add_argument("--seed", type=int, default=0, help="random: prompt seed")
    g.add_argument("--loops", type=int, default=4, help="ralph: agent loops run in parallel")
    g.add_argument("--iterations", type=int, default=5, help="ralph: iterations per loop")
    g.add_argument(
        "--metrics-url", help="ralph: engine /metrics to read prefix-cache counters from"
    )
    g.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    g.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="the engine's API key (env OPENAI_API_KEY)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", dest="json_out", metavar="FILE|-", help="write the report as JSON")
    out.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="write charts (needs matplotlib)"
    )
    out.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="load-test one engine: throughput, TTFT, ITL, prefix-cache hit rate",
        description="Send concurrent streamed OpenAI requests to a model's engine and report "
        "requests/s, tokens/s, TTFT/ITL/E2E percentiles and errors per concurrency level. "
        "The ralph workload re-sends one long agent prompt with a growing transcript and "
        "reports the engine's prefix-cache hit rate per iteration.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="a model of the daemon (its endpoint is looked up)")
    where.add_argument("--target", metavar="URL", help="an OpenAI server, e.g. http://host:8000")
    p.add_argument("--served-model-name", help="with --target (default: first of /v1/models)")
    add_daemon_options(p)
    _add_workload_options(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "compare",
        help="bench one model under several settings, restarting it through the daemon",
        description="For each variant, restart the model with runtime overrides, wait until "
        "ready and run the same workload; the original overrides are restored at the end, "
        "also after Ctrl-C or an error. A variant that never gets ready is reported as failed.",
    )
    p.add_argument("--model", required=True, help="a model of the daemon")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="[LABEL:]KEY=VALUE[,KEY=VALUE...]",
        help="settings to restart with, e.g. prefix-on:enable_prefix_caching=true; values are "
        "JSON when they parse (true, 0.5, [\"--x\"]); 'LABEL:' alone keeps the model's settings",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="one variant per value, e.g. gpu_memory_utilization=0.5,0.7,0.9; "
        "several --sweep give every combination",
    )
    p.add_argument(
        "--ready-timeout", type=float, default=900.0, help="seconds to wait for each restart"
    )
    add_daemon_options(p)
    _add_workload_options(p)
    p.set_defaults(func=cmd_compare)


def _plan(args: argparse.Namespace) -> BenchPlan:
    ignore_eos = args.workload == "random" if args.ignore_eos is None else args.ignore_eos
    requests = args.requests
    if args.workload != "ralph" and requests is None and args.duration is None:
        requests = 32
    return BenchPlan(
        workload=args.workload,
        endpoint=args.endpoint,
        concurrency=args.concurrency,
        requests=requests,
        duration_s=args.duration,
        gen=Generation(args.max_tokens, ignore_eos, args.temperature),
        input_len=args.input_len,
        seed=args.seed,
        loops=args.loops,
        iterations=args.iterations,
        warmup=args.warmup,
        timeout_s=args.timeout,
    )


def _progress(args: argparse.Namespace) -> Progress:
    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    return say


def _run(coro: Coroutine[Any, Any, None]) -> bool:
    """Run to the end; False when Ctrl-C or SIGTERM cancelled it (its finally blocks still ran)."""

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        handle = False
        # Signal handlers can only be set from the main thread (not when embedded in a worker).
        if task is not None and threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
            handle = True
        try:
            await coro
        finally:
            if handle:
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return False
    return True


def _emit(args: argparse.Namespace, obj: Any, text: str, plot: Any) -> None:
    if args.json_out == "-":
        print(to_json(obj))
    else:
        print(text)
        if args.json_out:
            Path(args.json_out).write_text(to_json(obj) + "\n", encoding="utf-8")
    if args.plot:
        plot(obj, args.plot)


def _target(args: argparse.Namespace) -> Target:
    if args.model:
        with ControlClient(args.url, resolve_token(args.token_file)) as control:
            status = control.model(args.model)
        if status["state"] != "ready":
            raise ControlError(f"model {args.model} is {status['state']}: {status.get('reason')}")
        return Target.from_status(status, args.api_key, args.metrics_url)
    base = args.target.rstrip("/")
    served = args.served_model_name
    if served is None:

        async def probe() -> str:
            async with OpenAIClient(base, "", api_key=args.api_key) as client:
                return await client.served_model()

        try:
            served = asyncio.run(probe())
        except ServerError as exc:
            raise ControlError(f"cannot list models at {base}/v1/models: {exc}") from None
    return Target(base, served, args.metrics_url or f"{base}/metrics", args.api_key)


def _require_plot(args: argparse.Namespace) -> None:
    """Refuse --plot without matplotlib now, rather than after a run of many minutes."""
    if args.plot:
        from orchestrator.bench.plot import require_matplotlib

        require_matplotlib()


def cmd_bench(args: argparse.Namespace) -> int:
    from orchestrator.bench.plot import PlotUnavailable, plot_bench

    try:
        _require_plot(args)
        plan = _plan(args)
    except (ValueError, PlotUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = _target(args)
    report = new_report(target, plan)
    finished = _run(run_bench(target, plan, report, _progress(args)))
    if not finished:
        report.notes.append("interrupted: only the levels that finished are shown")
    _emit(args, report, render_bench(report), plot_bench)
    if not finished:
        return EXIT_INTERRUPTED
    if report.refused is not None:
        return 1
    return 0 if any(lv.completed for lv in report.levels) else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrator.bench.plot import PlotUnavailable, plot_compare

    try:
        _require_plot(args)
        plan = _plan(args)
        variants = [parse_variant(v) for v in args.variant] + sweep_variants(args.sweep)
    except (ValueError, VariantError, PlotUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not variants:
        print("error: give at least one --variant or --sweep", file=sys.stderr)
        return 2
    report = CompareReport(model=args.model)
    progress = _progress(args)

    async def measure(target: Target) -> BenchReport:
        bench = new_report(target, plan)
        await run_bench(target, plan, bench, progress)
        return bench

    with ControlClient(args.url, resolve_token(args.token_file)) as client:
        finished = _run(
            run_compare(
                ThreadedControl(client),
                args.model,
                variants,
                measure,
                report,
                api_key=args.api_key,
                ready_timeout_s=args.ready_timeout,
                progress=progress,
            )
        )
    _emit(args, report, render_compare(report), plot_compare)
    if not finished:
        return EXIT_INTERRUPTED
    ok = report.restored and all(v.status == "ok" for v in report.variants)
    return 0 if ok else 1
