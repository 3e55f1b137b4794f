"""Run every daemon-cost benchmark, one process each, then repeat their summary lines together.

Run: .venv/bin/python -m tests.perf.daemon_all [name ...]   (names without the daemon_ prefix)
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = (
    "readiness_lag",
    "crash_detection",
    "api_load",
    "footprint",
    "start_all",
    "stop_all",
    "metrics_scrape",
    "dashboard",
)


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    summaries, failed = [], []
    for name in chosen:
        t0 = time.monotonic()
        # Each in its own process: one benchmark's daemon and engines never linger into the next.
        done = subprocess.run(
            [sys.executable, "-m", f"tests.perf.daemon_{name}"], capture_output=True, text=True
        )
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            failed.append(name)
            summaries.append(f"daemon_{name}: FAILED (exit {done.returncode})")
        else:
            summaries.append(f"{lines[-1]} ({time.monotonic() - t0:.0f} s)")
    print("\n== summary ==")
    print("\n".join(summaries))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
