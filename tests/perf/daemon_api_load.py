"""Control plane under load: GET /api/v1/models latency with 56 engines supervised and 100 clients.

Run: .venv/bin/python -m tests.perf.daemon_api_load [--duration 8] [--dashboard]
Of the 56 engines, 8 crash-loop (crash 1 s after ready, relaunched after a 0.2-0.5 s backoff),
8 stay loading (probed all along) and 40 are ready. The load comes from tests/perf/_loadgen.py in
its own process: 100 keep-alive clients polling on Poisson schedules of 1, 2 and 5 requests/s
each (100, 200, 500 requests/s offered; latency from the scheduled send, so queueing counts),
then a closed loop (each client re-asks at once) for the throughput limit. Also reported: the
daemon's CPU per request (which the machine's load does not change much) and the loadgen's own
CPU use, to show it was not the bottleneck.

--dashboard keeps two dashboard pages open all along, polled as the page polls them (every 2 s):
the admin's overview of all 56 models and one model's page with its log tail. A first step with
no API load ("idle") shows what the open pages alone cost the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil

from tests.perf._fleet import ENGINES, Fleet, load_avg, report, stats_ms, verdict

TARGET_P99_MS = 20.0
CLIENTS = 100
SETTLE_S = 3.0  # the 56 engine interpreters' own start-up CPU is over by then
PATH = "/api/v1/models"


def _knobs(i: int) -> dict[str, str]:
    if i % 7 == 0:  # one per GPU crash-loops
        return {"STANDIN_STARTUP_DELAY": "0.5", "STANDIN_CRASH_AFTER": "1.0"}
    if i % 7 == 1:  # one per GPU is still loading
        return {"STANDIN_STARTUP_DELAY": "600"}
    return {}


PAGE_POLL_S = 2.0  # what dashboard.js does while a page is visible


@contextlib.contextmanager
def dashboard_open(url: str, model: str) -> Iterator[dict[str, Any]]:
    """Poll like an overview page and one model's page; counts what they fetched."""
    stop = threading.Event()
    seen: dict[str, Any] = {"polls": 0, "bytes": 0, "latencies_s": []}

    def run() -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            c.get("/ui/api/session").raise_for_status()  # open mode: the cookie comes with it
            since, after = 0.0, -1
            while not stop.is_set():
                started = time.perf_counter()
                over = c.get(f"/ui/api/overview?since={since}")
                one = c.get(f"/ui/api/models/{model}")
                logs = c.get(f"/ui/api/models/{model}/logs?after={after}")
                seen["latencies_s"].append(time.perf_counter() - started)
                for r in (over, one, logs):
                    r.raise_for_status()
                    seen["bytes"] += len(r.content)
                history = over.json()["history"]
                since = history[-1]["at"] if history else since
                after = logs.json()["next"]
                seen["polls"] += 1
                stop.wait(PAGE_POLL_S)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def idle(fleet: Fleet, duration: float) -> dict[str, Any]:
    """Daemon CPU with no API load, whatever else (an open dashboard) is going on."""
    daemon = psutil.Process(fleet.pid)
    cpu0 = sum(daemon.cpu_times()[:2])
    time.sleep(duration)
    return {"daemon_cpu_pct": round(100 * (sum(daemon.cpu_times()[:2]) - cpu0) / duration, 2)}


def load(fleet: Fleet, duration: float, rate: float | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tests.perf._loadgen", fleet.url, PATH]
    argv += ["--clients", str(CLIENTS), "--duration", str(duration)]
    if rate is not None:
        argv += ["--rate-per-client", str(rate)]
    before = len(fleet.transitions)
    daemon = psutil.Process(fleet.pid)
    cpu0 = sum(daemon.cpu_times()[:2])
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    cpu = sum(daemon.cpu_times()[:2]) - cpu0
    got = json.loads(done.stdout)
    churn = fleet.transitions[before:]
    return {
        "offered_rps": got["offered_rps"],
        "achieved_rps": got["achieved_rps"],
        "latency": stats_ms(got.pop("latencies_s")),
        "daemon_cpu_pct": round(100 * cpu / got["wall_s"], 1),
        "daemon_cpu_ms_per_request": round(1000 * cpu / max(got["requests"], 1), 3),
        "failed": got["failed"],
        "failures": got["failures"],
        "loadgen_cpu_fraction": got["loadgen_cpu_fraction"],
        "response_bytes": got["response_bytes"],
        "engine_transitions_meanwhile": len(churn),
        "crashes_meanwhile": sum(1 for t in churn if t.new == "backoff"),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per load step")
    p.add_argument(
        "--dashboard", action="store_true", help="with an overview and a model page open"
    )
    args = p.parse_args(argv)
    load_start = load_avg()
    steps: dict[str, Any] = {}
    with Fleet(
        env_for=_knobs,
        orchestrator={"backoff_initial_s": 0.2, "backoff_max_s": 0.5, "max_restarts": 100000},
    ) as fleet:
        fleet.start()
        fleet.wait_control_plane()
        stable = [n for i, n in enumerate(fleet.names) if i % 7 > 1]
        fleet.wait(
            lambda f: all(f.states.get(n) == "ready" for n in stable), 60, "stable engines ready"
        )
        time.sleep(SETTLE_S)
        with contextlib.ExitStack() as stack:
            page = None
            if args.dashboard:
                page = stack.enter_context(dashboard_open(fleet.url, fleet.names[2]))
                time.sleep(2 * PAGE_POLL_S)  # the page's first readings are in
            steps["idle"] = idle(fleet, args.duration)
            for rate in (1.0, 2.0, 5.0, None):
                key = f"{CLIENTS}x{rate:g}rps" if rate else f"{CLIENTS}_closed_loop"
                steps[key] = load(fleet, args.duration, rate)
    dashboard = None
    if page is not None:
        dashboard = {
            "polls": page["polls"],
            "bytes_per_poll": page["bytes"] // max(page["polls"], 1),
            "poll_latency": stats_ms(page["latencies_s"]),
        }
    result = {
        "engines": ENGINES,
        "clients": CLIENTS,
        "path": PATH,
        "dashboard_open": dashboard,
        "steps": steps,
        "target_p99_ms": TARGET_P99_MS,
        "load_avg_start": load_start,
    }
    parts = [
        f"{s['achieved_rps']} rps p50 {s['latency']['median_ms']} p99 {s['latency']['p99_ms']} ms"
        for k, s in steps.items()
        if k != "idle"
    ]
    parts.insert(0, f"idle daemon CPU {steps['idle']['daemon_cpu_pct']}%")
    first = steps[f"{CLIENTS}x1rps"]["latency"]["p99_ms"]
    report(
        "daemon_api_load",
        result,
        f"{'with' if args.dashboard else 'no'} dashboard open; "
        f"{CLIENTS} clients at 1/2/5 rps each and closed loop: {'; '.join(parts)}; target p99 <= "
        f"{TARGET_P99_MS:g} ms at 100 rps: {verdict(first, TARGET_P99_MS)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
