"""Footprint: the daemon's memory and CPU while it idly supervises 56 ready engines.

Run: .venv/bin/python -m tests.perf.daemon_footprint [--seconds 30]
Default settings (health_interval_s = 5 s, so 56 probes every 5 s). Once all 56 are ready and
the start-up has settled, psutil reads the daemon process's CPU times across the window and
samples its RSS (and USS, the memory only it holds) once a second.
"""

from __future__ import annotations

import argparse
import sys
import time

import psutil

from orchestrator.units import MIB
from tests.perf._fleet import ENGINES, Fleet, load_avg, report, verdict

TARGET_RSS_MB = 100.0
TARGET_CPU_PCT = 1.0
SETTLE_S = 6.0  # one health interval and a bit: every engine has had its first probe


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    args = p.parse_args(argv)
    load_start = load_avg()
    with Fleet() as fleet:
        fleet.start()
        fleet.wait_control_plane()
        fleet.wait_all("ready", timeout=60)
        time.sleep(SETTLE_S)
        daemon = psutil.Process(fleet.pid)
        rss, uss = [], []
        c0, t0 = daemon.cpu_times(), time.monotonic()
        end = t0 + args.seconds
        while (now := time.monotonic()) < end:
            mem = daemon.memory_full_info()
            rss.append(mem.rss)
            uss.append(mem.uss)
            time.sleep(min(1.0, end - now))
        c1, t1 = daemon.cpu_times(), time.monotonic()
        threads, fds = daemon.num_threads(), daemon.num_fds()
        still_ready = fleet.count("ready")
    cpu_s = (c1.user - c0.user) + (c1.system - c0.system)
    cpu_pct = 100 * cpu_s / (t1 - t0)
    result = {
        "engines": ENGINES,
        "window_s": round(t1 - t0, 2),
        "health_interval_s": 5.0,
        "cpu_pct_of_one_core": round(cpu_pct, 3),
        "cpu_user_s": round(c1.user - c0.user, 3),
        "cpu_system_s": round(c1.system - c0.system, 3),
        "rss_mb_max": round(max(rss) / MIB, 1),
        "uss_mb_max": round(max(uss) / MIB, 1),
        "threads": threads,
        "fds": fds,
        "engines_ready_at_end": still_ready,
        "target_rss_mb": TARGET_RSS_MB,
        "target_cpu_pct": TARGET_CPU_PCT,
        "load_avg_start": load_start,
    }
    ok = verdict(result["rss_mb_max"], TARGET_RSS_MB) == verdict(cpu_pct, TARGET_CPU_PCT) == "met"
    report(
        "daemon_footprint",
        result,
        f"idle with {ENGINES} ready engines: RSS {result['rss_mb_max']} MB (USS "
        f"{result['uss_mb_max']}), CPU {result['cpu_pct_of_one_core']}% of a core over "
        f"{result['window_s']} s; targets <= {TARGET_RSS_MB:g} MB, <= {TARGET_CPU_PCT:g}%: "
        f"{'met' if ok else 'MISSED'}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
