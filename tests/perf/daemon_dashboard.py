"""What an open dashboard costs the daemon supervising 56 ready engines, idle otherwise.

Run: .venv/bin/python -m tests.perf.daemon_dashboard [--seconds 20] [--rounds 2]
Alternates windows with no page open and windows with two pages polled as dashboard.js polls
them (every 2 s: the admin overview of all 56 models, whose engine numbers may be 5 s old, and
one model's page with its log tail). Reports the daemon's CPU in each (psutil, user + system),
the extra CPU per page poll, the poll latency and the bytes a poll moves. The daemon's own idle
work (56 health probes every 5 s, the GPU history sample every 2 s) is in both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import psutil

from tests.perf._fleet import ENGINES, Fleet, load_avg, report, stats_ms
from tests.perf.daemon_api_load import PAGE_POLL_S, dashboard_open

SETTLE_S = 6.0


def cpu_s(daemon: psutil.Process) -> float:
    t = daemon.cpu_times()
    return float(t.user + t.system)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of each window")
    p.add_argument("--rounds", type=int, default=2, help="closed/open window pairs")
    args = p.parse_args(argv)
    load_start = load_avg()
    closed: list[float] = []
    opened: list[float] = []
    per_poll: list[float] = []
    latencies: list[float] = []
    polled_bytes = polls = 0
    with Fleet() as fleet:
        fleet.start()
        fleet.wait_control_plane()
        fleet.wait_all("ready", timeout=60)
        time.sleep(SETTLE_S)
        daemon = psutil.Process(fleet.pid)
        for _ in range(args.rounds):
            c0 = cpu_s(daemon)
            time.sleep(args.seconds)
            closed.append((cpu_s(daemon) - c0) / args.seconds)
            with dashboard_open(fleet.url, fleet.names[2]) as page:
                time.sleep(PAGE_POLL_S)  # the first poll reads every engine: not the steady state
                c0, n0 = cpu_s(daemon), page["polls"]
                time.sleep(args.seconds)
                used, n = cpu_s(daemon) - c0, page["polls"] - n0
            opened.append(used / args.seconds)
            per_poll.append((used - closed[-1] * args.seconds) / max(n, 1))
            latencies += page["latencies_s"][1:]
            polled_bytes += page["bytes"]
            polls += page["polls"]
    result = {
        "engines": ENGINES,
        "window_s": args.seconds,
        "rounds": args.rounds,
        "daemon_cpu_pct_closed": [round(100 * c, 2) for c in closed],
        "daemon_cpu_pct_open": [round(100 * c, 2) for c in opened],
        "extra_cpu_ms_per_poll": [round(1000 * c, 2) for c in per_poll],
        "poll_latency": stats_ms(latencies),
        "bytes_per_poll": polled_bytes // max(polls, 1),
        "load_avg_start": load_start,
    }
    extra = statistics.median(per_poll) * 1000
    report(
        "daemon_dashboard",
        result,
        f"{ENGINES} ready engines; daemon CPU {statistics.median(closed) * 100:.2f}% of a core "
        f"with no page open, {statistics.median(opened) * 100:.2f}% with an overview and a model "
        f"page polled every {PAGE_POLL_S:g} s ({extra:.1f} ms CPU per poll of both); poll "
        f"latency p50 {result['poll_latency'].get('median_ms')} ms",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
