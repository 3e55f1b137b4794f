"""The request log's write cost per 1,000 requests, through the accounting journal the keyed
gateway uses (one writer thread, batched transactions).

    .venv/bin/python -m tests.perf.request_log_write_cost [--requests 20000] [--concurrency 64]

Two variants side by side (A B A B), each writing what `concurrency` requests in flight
write: `log` = the request's row at admission and its outcome at the end (the request log)
plus the daily roll-up, as the gateway does; `rollup` = the daily roll-up alone. Their difference
is the log's own cost. CPU seconds are the whole process's (the journal thread does the writing);
prints JSON lines with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

from orchestrator.accounting.journal import Journal
from orchestrator.accounting.recording import Finished, Started

TODAY = date(2026, 12, 7)


def _finished(rid: str, i: int) -> Finished:
    return Finished(
        rid, TODAY, f"student{i % 40}", f"key{i % 40}", f"model{i % 8}", time.time(), 200,
        False, 30, 64, 94, False, 0.012, 0.8, True, "/v1/chat/completions",
        f"10.0.{i % 250}.7:5{i % 9999:04d}", None, uuid.uuid4().hex, uuid.uuid4().hex,
    )  # fmt: skip


async def _one(journal: Journal, i: int, log: bool) -> None:
    rid = uuid.uuid4().hex
    if log:
        journal.submit(Started(rid, "g", time.time(), f"student{i % 40}", f"key{i % 40}",
                               f"model{i % 8}").write())  # fmt: skip
        await journal.submit(_finished(rid, i).write())
    else:
        await journal.submit(_finished(rid, i).add_to_day)


async def run(variant: str, requests: int, concurrency: int, tmp: Path) -> dict[str, Any]:
    journal = Journal(tmp / f"{variant}-{time.monotonic_ns()}.sqlite3")
    sem = asyncio.Semaphore(concurrency)

    async def guarded(i: int) -> None:
        async with sem:
            await _one(journal, i, variant == "log")

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in range(requests)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await asyncio.to_thread(journal.close)
    return {
        "variant": variant, "requests": requests, "concurrency": concurrency,
        "cpu_ms_per_1000": round(1000 * cpu / requests * 1000, 1),
        "wall_ms_per_1000": round(1000 * wall / requests * 1000, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    a = p.parse_args()
    print(json.dumps({"cpus": os.cpu_count(), "load": os.getloadavg()}))
    results: dict[str, list[dict[str, Any]]] = {"log": [], "rollup": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        for _ in range(2):  # A B A B
            for variant in ("log", "rollup"):
                r = asyncio.run(run(variant, a.requests, a.concurrency, Path(tmpdir)))
                results[variant].append(r)
                print(json.dumps(r), flush=True)
    mean = {k: sum(r["cpu_ms_per_1000"] for r in v) / len(v) for k, v in results.items()}
    print(json.dumps({
        "log_and_rollup_cpu_ms_per_1000": round(mean["log"], 1),
        "rollup_only_cpu_ms_per_1000": round(mean["rollup"], 1),
        "request_log_cpu_ms_per_1000": round(mean["log"] - mean["rollup"], 1),
        "load": [round(x, 2) for x in os.getloadavg()],
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
