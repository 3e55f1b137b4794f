"""Readiness lag: from an engine's first possible 200 on /health to the daemon reporting `ready`.

Run: .venv/bin/python -m tests.perf.daemon_readiness_lag
Engine side: the stand-in's "ready" event, written right after its socket starts listening and
before its event loop can answer anything, so it is the earliest instant /health can return 200
(the lag measured is an upper bound). Daemon side: the "starting -> ready" transition line,
stamped on arrival through a pipe (tests/perf/_fleet.py). Two rounds of 56 engines, both loading
for longer than launching all 56 takes (as vLLM's 30 s+ loads do): staggered (engine i ready
4 + 0.05*i s after its launch, one at a time) and all alike (every engine ready 4 s after its
launch, so they come as fast as the launches went out).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tests.perf._fleet import ENGINES, Fleet, load_avg, report, stats_ms, verdict

TARGET_MEDIAN_MS = 100.0


def lags(fleet: Fleet) -> list[float]:
    out = []
    for name in fleet.names:
        engine_ready = fleet.events(name, "ready")[0]["t"]
        daemon_ready = next(t.t for t in fleet.transitions if t.model == name and t.new == "ready")
        out.append(daemon_ready - engine_ready)
    return out


def one_round(delay_of: Callable[[int], float]) -> dict[str, Any]:
    with Fleet(env_for=lambda i: {"STANDIN_STARTUP_DELAY": str(delay_of(i))}) as fleet:
        fleet.start()
        fleet.wait_control_plane()
        fleet.wait_all("ready", timeout=60)
        return stats_ms(lags(fleet))


def main() -> int:
    load_start = load_avg()
    staggered = one_round(lambda i: round(4.0 + 0.05 * i, 3))
    burst = one_round(lambda i: 4.0)
    result = {
        "engines": ENGINES,
        "method": "engine 'ready' event (listening) -> daemon 'starting -> ready' log line",
        "staggered": staggered,
        "burst": burst,
        "target_median_ms": TARGET_MEDIAN_MS,
        "load_avg_start": load_start,
    }
    worst = max(staggered["median_ms"], burst["median_ms"])
    report(
        "daemon_readiness_lag",
        result,
        f"median {staggered['median_ms']} ms (p99 {staggered['p99_ms']}) staggered, "
        f"{burst['median_ms']} ms (p99 {burst['p99_ms']}) burst of {ENGINES}; "
        f"target median <= {TARGET_MEDIAN_MS:g} ms: {verdict(worst, TARGET_MEDIAN_MS)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
