"""What the daemon's start-up scan for its engines' marks costs (one read of every
/proc/PID/environ), on a host with many processes.

Run: .venv/bin/python -m tests.perf.startup_scan [--others 1000]
Starts `--others` unmarked `sleep` processes plus 112 marked ones (56 engines, each a server and
its EngineCore, as on a full 8 x H100 host), then times process.find_by_env 20 times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.engine import marker, process
from tests.perf._fleet import load_avg, report, stats_ms

MARKED = 112


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--others", type=int, default=1000)
    args = parser.parse_args()
    load_start = load_avg()
    sleep = shutil.which("sleep") or "/bin/sleep"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="scan-") as tmp:
        mark = marker.DaemonMark.load(Path(tmp))
        try:
            for i in range(args.others + MARKED):
                env = dict(os.environ)
                if i < MARKED:
                    env.update(mark.env(f"m{i // 2}"))
                procs.append(subprocess.Popen([sleep, "300"], env=env))
            total = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
            times, found = [], 0
            for _ in range(20):
                t0 = time.perf_counter()
                found = len(process.find_by_env(marker.ENV, mark.prefix))
                times.append(time.perf_counter() - t0)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    result = {
        "processes_on_host": total,
        "marked_found": found,
        "scan": stats_ms(times),
        "load_avg_start": load_start,
    }
    scan = result["scan"]
    report("startup_scan", result, f"{total} processes scanned in {scan['median_ms']} ms (median)")
    return 0 if found == MARKED else 1


if __name__ == "__main__":
    sys.exit(main())
