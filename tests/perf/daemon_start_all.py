"""Start-all: time for the daemon to bring up 56 engines, against one engine alone.

Run: .venv/bin/python -m tests.perf.daemon_start_all
Every engine loads for STANDIN_STARTUP_DELAY = 3 s. Timed from the daemon's first "stopped ->
starting" line (it has placed every model and launches them) to its last "-> ready" line; the
baseline is the same daemon with one engine. On a small machine the engines' own start (each a
Python interpreter: ~80 ms of CPU) competes for the cores, so the result also shows the engines'
CPU, the floor it sets (load time + their CPU spread over all cores, with a daemon costing
nothing), the daemon's own CPU over the bring-up, and the slowest readiness lag.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import psutil

from tests.perf._fleet import ENGINES, Fleet, load_avg, report, verdict

DELAY_S = 3.0
TARGET_RATIO = 1.2


def bring_up(n: int) -> dict[str, Any]:
    with Fleet(n=n, env_for=lambda i: {"STANDIN_STARTUP_DELAY": str(DELAY_S)}) as fleet:
        launched = fleet.start()
        fleet.wait_control_plane()
        daemon = psutil.Process(fleet.pid)
        last_ready = fleet.wait_all("ready", timeout=90)
        daemon_cpu = sum(daemon.cpu_times()[:2])
        first_start = min(t.t for t in fleet.transitions if t.new == "starting")
        started = [fleet.events(name, "started")[0] for name in fleet.names]
        engines_cpu = sum(sum(psutil.Process(e["pid"]).cpu_times()[:2]) for e in started)
        ready = {name: fleet.events(name, "ready")[0]["t"] for name in fleet.names}
        lag = max(t.t - ready[t.model] for t in fleet.transitions if t.new == "ready")
    took = last_ready - first_start
    floor = DELAY_S + engines_cpu / (os.cpu_count() or 1)
    return {
        "engines": n,
        "launch_to_all_ready_s": round(took, 3),
        "daemon_process_start_to_all_ready_s": round(last_ready - launched, 3),
        "launch_to_last_engine_first_line_s": round(max(e["t"] for e in started) - first_start, 3),
        "engines_cpu_s": round(engines_cpu, 2),
        "machine_floor_s": round(floor, 3),
        "daemon_cpu_s_total": round(daemon_cpu, 2),
        "max_readiness_lag_ms": round(lag * 1000, 1),
    }


def main() -> int:
    load_start = load_avg()
    one = bring_up(1)
    fleet = bring_up(ENGINES)
    key = "launch_to_all_ready_s"
    ratio = fleet[key] / one[key]
    result = {
        "startup_delay_s": DELAY_S,
        "one_engine": one,
        "all_engines": fleet,
        "ratio": round(ratio, 3),
        "ratio_to_machine_floor": round(fleet[key] / fleet["machine_floor_s"], 3),
        "target_ratio": TARGET_RATIO,
        "load_avg_start": load_start,
    }
    report(
        "daemon_start_all",
        result,
        f"{ENGINES} engines ready {fleet[key]} s after launch vs {one[key]} s for one: "
        f"{ratio:.2f}x (target <= {TARGET_RATIO:g}x: {verdict(ratio, TARGET_RATIO)}); the "
        f"engines' own {fleet['engines_cpu_s']} s of CPU on {os.cpu_count()} cores set a floor "
        f"of {fleet['machine_floor_s']} s: {result['ratio_to_machine_floor']}x of it",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
