"""The bench client's own ceiling: requests/s and streamed tokens/s against a null server.

The null server (orchestrator.bench.nullserver) answers instantly, in its own process by default
so the two do not share one core. Numbers far above an engine's throughput mean the client is
not what a bench measures. Prints JSON, then a one-line summary.

    .venv/bin/python tests/perf/client_ceiling.py [--requests 2000] [--concurrency 1,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.bench.nullserver import NullServer
from orchestrator.bench.openai_stream import Generation, OpenAIClient, run_level
from orchestrator.bench.stats import summarize
from orchestrator.bench.workloads import BatchWorkload

ROOT = Path(__file__).resolve().parents[2]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(url: str, concurrency: int, requests: int, tokens: int) -> dict[str, Any]:
    async with OpenAIClient(url, "null", max_connections=concurrency) as client:
        # One unmeasured round opens the connections.
        await run_level(
            client,
            BatchWorkload(),
            Generation(max_tokens=tokens),
            concurrency,
            requests=concurrency,
        )
        cpu0 = _cpu_s()
        results, elapsed = await run_level(
            client, BatchWorkload(), Generation(max_tokens=tokens), concurrency, requests=requests
        )
        cpu = _cpu_s() - cpu0
    level = summarize(results, elapsed, concurrency)
    done = max(level.completed, 1)
    return {
        "concurrency": concurrency,
        "tokens_per_request": tokens,
        "requests": requests,
        "failed": level.failed,
        "requests_per_s": round(level.request_throughput, 1),
        "tokens_per_s": round(level.output_throughput, 1),
        "ttft_ms_p50": round(level.ttft_ms.p50, 3) if level.ttft_ms else None,
        # CPU the client spent, which does not depend on how busy the machine is: one core
        # fully used at this cost per request is the client's ceiling.
        "client_cpu_share": round(cpu / elapsed, 2),
        "client_cpu_us_per_request": round(1e6 * cpu / done, 1),
        "one_core_requests_per_s": round(done / cpu, 1) if cpu else None,
        "one_core_tokens_per_s": round(level.output_tokens / cpu, 1) if cpu else None,
    }


async def _run(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    rows = []
    for tokens in args.tokens:
        for concurrency in args.concurrency:
            row = await _measure(url, concurrency, args.requests, tokens)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


async def _in_process(args: argparse.Namespace) -> list[dict[str, Any]]:
    async with NullServer() as server:
        return await _run(args, server.url)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=2000, help="measured requests per point")
    p.add_argument("--concurrency", default="1,16,64", help="levels (default %(default)s)")
    p.add_argument("--tokens", default="1,256", help="tokens per answer (1: request-rate bound)")
    p.add_argument("--in-process", action="store_true", help="run the null server in this process")
    args = p.parse_args()
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.tokens = [int(x) for x in args.tokens.split(",")]
    t0 = time.perf_counter()
    if args.in_process:
        rows = asyncio.run(_in_process(args))
        where = "in-process"
    else:
        server = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.bench.nullserver", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = json.loads(server.stdout.readline())["url"]
            rows = asyncio.run(_run(args, url))
        finally:
            server.terminate()
            server.wait(timeout=10)
        where = "subprocess"
    print(json.dumps({"server": where, "points": rows}, indent=2))
    short = [r for r in rows if r["tokens_per_request"] == min(args.tokens)]
    long = [r for r in rows if r["tokens_per_request"] == max(args.tokens)]
    print(
        f"client ceiling ({where} null server, {time.perf_counter() - t0:.0f} s): measured "
        f"{max(r['requests_per_s'] for r in short):.0f} requests/s "
        f"({min(args.tokens)}-token answers) and "
        f"{max(r['tokens_per_s'] for r in long):.0f} streamed tokens/s "
        f"({max(args.tokens)}-token answers); per client CPU core "
        f"{max(r['one_core_requests_per_s'] or 0 for r in short):.0f} requests/s and "
        f"{max(r['one_core_tokens_per_s'] or 0 for r in long):.0f} tokens/s; "
        f"failed: {sum(r['failed'] for r in rows)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
