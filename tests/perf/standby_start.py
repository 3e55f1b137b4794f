"""One real vLLM CPU engine to /health 200: a plain start vs a standby's trigger, fork on and off.

    flock /tmp/heavy.lock .venv/bin/python -m tests.perf.standby_start [--runs 3] [--json FILE]

plain: launch -> /health 200, what every start and restart costs today. standby: a standby is
started and imports first (its time and RSS are printed, not counted), then trigger -> /health
200, what a restart through a prepared standby costs. fork sets VLLM_WORKER_MULTIPROC_METHOD=fork
(in the environment for plain, in the trigger for a standby); each run also says whether the
EngineCore was in fact forked, read from its /proc environ (an exec'd child's environment is
the one its parent had at spawn time, a forked child's is its parent's original). Variants run
round-robin, each round starting with the next one, so that load drifts hit all of them alike;
the load average is printed beside each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from orchestrator.engine import process
from orchestrator.engine.standby.channel import Standby
from orchestrator.tooling import cpu_venv
from tests.daemon_harness import free_ports
from tests.standby_support import Drain, engine_argv, engine_env, stop_tree, wait_health

VARIANTS = (("plain", False), ("plain", True), ("standby", False), ("standby", True))
TIMEOUT = 900


def engine_core_start(pid: int) -> str:
    """'forked' or 'spawned': how the API server `pid` started its EngineCore child."""
    try:
        parent = psutil.Process(pid)
        cores = [c for c in parent.children() if "EngineCore" in " ".join(c.cmdline())]
        if not cores:
            return "none found"
        return "forked" if cores[0].environ() == parent.environ() else "spawned"
    except psutil.Error as e:
        return f"unknown ({type(e).__name__})"


async def one_run(kind: str, fork: bool, command: list[str], model: Path) -> dict[str, Any]:
    (port,) = free_ports(1)
    argv = engine_argv(command, model, port)
    row: dict[str, Any] = {"variant": kind + ("+fork" if fork else ""), "load1": os.getloadavg()[0]}
    if kind == "plain":
        pid, fd = process.spawn(argv, engine_env(fork))
        log = Drain(fd)
        t0 = time.monotonic()
    else:
        sb = Standby.spawn(command, engine_env(), label="perf")
        pid, log = sb.pid, Drain(sb.output_fd)
        async with asyncio.timeout(TIMEOUT):
            ready = await sb.ready()
        row.update(prepare_s=round(ready.prepare_s, 2), standby_rss_mib=ready.rss_bytes >> 20)
        t0 = time.monotonic()
        await sb.trigger(argv, fork=fork)
    try:
        await wait_health(port, TIMEOUT, pid)
        row["to_health_s"] = round(time.monotonic() - t0, 2)
        row["engine_core"] = engine_core_start(pid)
    except (RuntimeError, TimeoutError):
        print(log.text()[-3000:], file=sys.stderr)
        raise
    finally:
        left = await stop_tree(pid)
    if left:
        raise RuntimeError(f"processes left after the run: {left}")
    return row


async def main_async(runs: int) -> dict[str, Any]:
    venv = cpu_venv.ensure_cpu_venv(cpu_venv.default_venv()).parent.parent
    model = cpu_venv.build_tiny_model(venv, cpu_venv.default_tiny_model_dir(seed=0))
    command = cpu_venv.cpu_engine_command(venv)
    load_before = os.getloadavg()
    rows = []
    for i in range(runs):
        # Each round starts with another variant: a load that drifts does not favour one.
        for kind, fork in VARIANTS[i % len(VARIANTS) :] + VARIANTS[: i % len(VARIANTS)]:
            row = await one_run(kind, fork, command, model)
            rows.append(row)
            print(f"run {i + 1}: " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    medians = {}
    for kind, fork in VARIANTS:
        name = kind + ("+fork" if fork else "")
        mine = [r for r in rows if r["variant"] == name]
        medians[name] = {
            "to_health_s": round(statistics.median(r["to_health_s"] for r in mine), 2),
            "load1": [round(r["load1"], 2) for r in mine],
            "engine_core": sorted({r["engine_core"] for r in mine}),
        }
        if kind == "standby":
            medians[name]["prepare_s"] = round(statistics.median(r["prepare_s"] for r in mine), 2)
            medians[name]["standby_rss_mib"] = statistics.median(r["standby_rss_mib"] for r in mine)
    return {
        "runs": rows,
        "median": medians,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs of each variant (default 3)")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args()
    result = asyncio.run(main_async(args.runs))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    m = result["median"]
    plain = m["plain"]["to_health_s"]
    print(f"vLLM CPU tiny engine, launch or trigger to /health 200, median of {args.runs}:")
    for name, v in m.items():
        extra = (
            f" (standby imported in {v['prepare_s']} s, RSS {v['standby_rss_mib']} MiB)"
            if "prepare_s" in v
            else ""
        )
        print(
            f"  {name:13} {v['to_health_s']:6.2f} s = {v['to_health_s'] / plain:.2f}x plain, "
            f"EngineCore {'/'.join(v['engine_core'])}, load1 {v['load1']}{extra}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
