"""Engine kills with the daemon up: kill -9 of a ready engine's server, over and over; what is left.

Run: .venv/bin/python -m tests.perf.daemon_engine_kills [--kills 100]
One daemon, two stand-in models with EngineCore grandchildren (which outlive their server's
SIGKILL). Each kill picks a ready model, SIGKILLs its server and waits until the model is ready on
a new process. Prints kills, the restart cycles the daemon counted, the time taken, and the
leftovers: processes of the engines that belong to no engine the API reports, and after the
daemon's SIGTERM, anything at all.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos import ENGINE_ENV, orphan_trees, statuses
from tests.daemon_harness import Daemon, free_ports, marked_pids, standin_model
from tests.perf._fleet import load_avg, report, stats_ms

NAMES = ("a", "b")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    args = parser.parse_args()
    load_start = load_avg()
    rng = random.Random(0)
    cycles: list[float] = []
    with tempfile.TemporaryDirectory(prefix="engine-kills-") as tmp:
        models = {
            n: standin_model(p, env=ENGINE_ENV) for n, p in zip(NAMES, free_ports(2), strict=True)
        }
        orch = {"max_restarts": 1000, "backoff_max_s": 0.2}
        d = Daemon(Path(tmp), models, orchestrator=orch)
        d.start(wait_ready=NAMES)
        began = time.monotonic()
        try:
            for _ in range(args.kills):
                name = rng.choice(NAMES)
                pid = d.wait_state(name, "ready")["pid"]
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                while not (
                    (s := d.status(name))["state"] == "ready" and s["pid"] not in (None, pid)
                ):
                    time.sleep(0.02)
                cycles.append(time.monotonic() - t0)
            seconds = time.monotonic() - began
            for name in NAMES:
                d.wait_state(name, "ready")
            now = statuses(d)
            orphans = orphan_trees(d, {n: m["pid"] for n, m in now.items()})
            restarts = sum(m["restarts"] for m in now.values())
        finally:
            exit_code = d.terminate()
            left = marked_pids(Path(tmp))
            for pid in left:
                os.kill(pid, signal.SIGKILL)
    result = {
        "kills": args.kills,
        "restart_cycles_counted": restarts,
        "seconds": round(seconds, 1),
        "kill_to_ready_again": stats_ms(cycles),
        "orphan_trees_while_up": {str(k): v for k, v in orphans.items()},
        "daemon_exit_code": exit_code,
        "left_after_sigterm": left,
        "load_avg_start": load_start,
    }
    leftovers = len(orphans) + len(left)
    summary = f"{args.kills} kills in {seconds:.0f} s, {restarts} cycles, {leftovers} leftovers"
    report("daemon_engine_kills", result, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
