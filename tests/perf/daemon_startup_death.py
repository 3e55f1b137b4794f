"""An engine that dies during start-up: how long its EngineCore outlives it, and how long until its
replacement runs, at stop_grace_s=5 (about 6 s before the tree got a SIGTERM of its own).

Run: .venv/bin/python -m tests.perf.daemon_startup_death [--kills 10]
One daemon, one stand-in model that takes 60 s to load and has an EngineCore grandchild. Each
round SIGKILLs the loading server and times, from the kill: the EngineCore gone (no longer in the
group), and the replacement server's "started" event (its interpreter is up), read from the
stand-in's event file. For comparison, the same after a *ready* engine's server is killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.chaos import ENGINE_ENV
from tests.daemon_harness import Daemon, events, free_ports, group_pids, standin_model, wait_until
from tests.perf._fleet import load_avg, report, stats_ms

GRACE_S = 5.0


def started(state: Path) -> set[int]:
    return {e["pid"] for e in events(state) if e["event"] == "started"}


def _kill_and_time(d: Daemon, state: Path, ready: bool) -> tuple[float, float]:
    """Kill the current server once it has its EngineCore; (EngineCore gone, replaced) in s."""
    server = d.wait_state("m", "ready" if ready else "starting")["pid"]
    cores = wait_until(lambda: [p for p in group_pids(server) if p != server], 10, "the EngineCore")
    before = started(state)
    killed = time.monotonic()
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: not set(cores) & set(group_pids(server)), 30, "the EngineCore to go", 0.002)
    gone = time.monotonic() - killed

    wait_until(lambda: started(state) - before, 30, "a replacement engine", 0.002)
    return gone, time.monotonic() - killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    load_start = load_avg()
    result: dict[str, Any] = {"stop_grace_s": GRACE_S, "load_avg_start": load_start}
    with tempfile.TemporaryDirectory(prefix="startup-death-") as tmp:
        for phase, delay in (("during_startup", "60"), ("after_ready", "0.2")):
            root = Path(tmp) / phase
            root.mkdir()
            state = root / "events.jsonl"
            env = {**ENGINE_ENV, "STANDIN_STARTUP_DELAY": delay, "STANDIN_STATE_FILE": str(state)}
            (port,) = free_ports(1)
            orch = {"stop_grace_s": GRACE_S, "max_restarts": 1000, "backoff_max_s": 0.2}
            d = Daemon(root, {"m": standin_model(port, env=env)}, orchestrator=orch)
            d.start()
            try:
                times = [
                    _kill_and_time(d, state, phase == "after_ready") for _ in range(args.kills)
                ]
            finally:
                d.terminate()
            result[phase] = {
                "engine_core_gone": stats_ms(t[0] for t in times),
                "replacement_started": stats_ms(t[1] for t in times),
            }
    median = result["during_startup"]["replacement_started"]["median_ms"]
    report(
        "daemon_startup_death", result, f"replacement after a start-up death: median {median} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
