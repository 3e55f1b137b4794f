"""The chaos test at length: many daemon kill -9s during start/stop storms, then what was left.

Run: .venv/bin/python -m tests.perf.daemon_chaos [--rounds 100] [--models 4] [--seed N]
The same rounds as tests/integration/test_chaos.py (tests/chaos.py): a storm of start, stop and
restart calls, one client per model; kill -9 of the daemon at a random moment, half the time
1-8 ms after it spawned an engine; half the time kill -9 of an engine's server while the daemon
is down; restart and check. Stand-ins with an EngineCore grandchild that outlive a closed
stdout. Prints the kills, commands, and every problem found (lost command, orphan tree, doubled
engine, state.json disagreeing with the API); stops at the first round with one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos import ENGINE_ENV, run_chaos
from tests.daemon_harness import Daemon, free_ports, marked_pids, standin_model
from tests.perf._fleet import load_avg, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--models", type=int, default=4)  # a100-mixed has 4 slices
    parser.add_argument("--seed", type=int, default=time.time_ns() % 1_000_000)
    args = parser.parse_args()
    load_start = load_avg()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        ports = free_ports(args.models)
        models = {
            f"m{i}": standin_model(port, autostart=i % 2 == 0, env=ENGINE_ENV)
            for i, port in enumerate(ports)
        }
        d = Daemon(Path(tmp), models)
        try:
            run = run_chaos(d, args.seed, args.rounds)
        finally:
            exit_code = d.terminate()
            left = marked_pids(Path(tmp))
            for pid in left:  # what a run that found problems left behind
                os.kill(pid, signal.SIGKILL)
    result = {
        **dataclasses.asdict(run),
        "daemon_exit_code_at_the_end": exit_code,
        "processes_left_after_the_last_daemon": left,
        "seconds": round(time.monotonic() - began, 1),
        "load_avg_start": load_start,
    }
    bad = len(run.problems) + len(left)
    summary = f"{run.daemon_kills} daemon kills, {run.commands} commands: {bad} problems"
    report("daemon_chaos", result, summary + " (target 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
