"""Start-all: time for the daemon to bring up 56 engines, against one engine alone.

Run: .venv/bin/python -m tests.perf.daemon_start_all
Every engine loads for STANDIN_STARTUP_DELAY = 3 s. Timed from the control plane first answering
(the daemon has placed every model and launches them then) and from the daemon's own launch, to
the last "-> ready" line; the baseline is the same daemon with one engine. Also shown: when the
last engine process began running (launch spread, which on a small machine is mostly 56 Python
interpreters sharing its cores) and the slowest readiness lag.
"""

from __future__ import annotations

import sys
from typing import Any

from tests.perf._fleet import ENGINES, Fleet, load_avg, report, verdict

DELAY_S = 3.0
TARGET_RATIO = 1.2


def bring_up(n: int) -> dict[str, Any]:
    with Fleet(n=n, env_for=lambda i: {"STANDIN_STARTUP_DELAY": str(DELAY_S)}) as fleet:
        launched = fleet.start()
        answering = fleet.wait_control_plane()
        last_ready = fleet.wait_all("ready", timeout=90)
        first_lines = [fleet.events(name, "started")[0]["t"] for name in fleet.names]
        ready_events = {name: fleet.events(name, "ready")[0]["t"] for name in fleet.names}
        lag = max(t.t - ready_events[t.model] for t in fleet.transitions if t.new == "ready")
    return {
        "engines": n,
        "daemon_launch_to_all_ready_s": round(last_ready - launched, 3),
        "control_plane_to_all_ready_s": round(last_ready - answering, 3),
        "control_plane_to_last_engine_first_line_s": round(max(first_lines) - answering, 3),
        "daemon_launch_to_control_plane_s": round(answering - launched, 3),
        "max_readiness_lag_ms": round(lag * 1000, 1),
    }


def main() -> int:
    load_start = load_avg()
    one = bring_up(1)
    fleet = bring_up(ENGINES)
    key = "control_plane_to_all_ready_s"
    ratio = fleet[key] / one[key]
    result = {
        "startup_delay_s": DELAY_S,
        "one_engine": one,
        "all_engines": fleet,
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "load_avg_start": load_start,
    }
    report(
        "daemon_start_all",
        result,
        f"{ENGINES} engines ready {fleet[key]} s after the control plane answered vs "
        f"{one[key]} s for one: {ratio:.2f}x (from daemon launch "
        f"{fleet['daemon_launch_to_all_ready_s']} s); target <= {TARGET_RATIO:g}x: "
        f"{verdict(ratio, TARGET_RATIO)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
