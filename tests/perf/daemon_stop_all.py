"""Stop-all: from SIGTERM to the daemon's exit with 56 engines, all stopped, nothing left behind.

Run: .venv/bin/python -m tests.perf.daemon_stop_all
Every engine is a server plus an "EngineCore" grandchild, as vLLM is; stop_grace_s = 2. Variant
"quick": engines stop 0.1 s after SIGTERM (the stand-in's default). Variant "slow": every engine
takes 1 s (STANDIN_SIGTERM_DELAY=1) and 4 ignore SIGTERM, so they need the grace period and a
SIGKILL. Stopping in parallel should take about one grace period, not 56 of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tests.perf._fleet import ENGINES, Fleet, load_avg, report, verdict

GRACE_S = 2.0
STUBBORN = 4
TARGET_GRACE_PERIODS = 1.5  # "about one": all engines' grace periods overlap, plus the stop itself


def _slow(i: int) -> dict[str, str]:
    knobs = {"STANDIN_SPAWN_GRANDCHILD": "1", "STANDIN_SIGTERM_DELAY": "1"}
    if i % (ENGINES // STUBBORN) == 0:
        knobs["STANDIN_IGNORE_SIGTERM"] = "1"
    return knobs


def stop_all(env_for: Callable[[int], dict[str, str]]) -> dict[str, Any]:
    with Fleet(env_for=env_for, orchestrator={"stop_grace_s": GRACE_S}) as fleet:
        fleet.start()
        fleet.wait_control_plane()
        fleet.wait_all("ready", timeout=90)
        took = fleet.terminate(timeout=120)
        assert fleet.proc is not None
        return {
            "sigterm_to_exit_s": round(took, 3),
            "exit_code": fleet.proc.returncode,
            "processes_left": len(fleet.leftovers()),
            "engines_stopped": fleet.count("stopped"),
        }


def main() -> int:
    load_start = load_avg()
    quick = stop_all(lambda i: {"STANDIN_SPAWN_GRANDCHILD": "1"})
    slow = stop_all(_slow)
    result = {
        "engines": ENGINES,
        "stop_grace_s": GRACE_S,
        "quick": quick,
        "slow_with_stubborn": slow,
        "target_grace_periods": TARGET_GRACE_PERIODS,
        "load_avg_start": load_start,
    }
    clean = all(v["processes_left"] == 0 and v["exit_code"] == 0 for v in (quick, slow))
    grace_periods = slow["sigterm_to_exit_s"] / GRACE_S
    result["slow_in_grace_periods"] = round(grace_periods, 2)
    report(
        "daemon_stop_all",
        result,
        f"SIGTERM to exit with {ENGINES} engines: {quick['sigterm_to_exit_s']} s (engines stop in "
        f"0.1 s), {slow['sigterm_to_exit_s']} s = {grace_periods:.2f} grace periods (1 s each, "
        f"{STUBBORN} ignore SIGTERM, grace {GRACE_S:g} s); "
        f"{'nothing left behind' if clean else 'NOT CLEAN'}; target about one grace period "
        f"(<= {TARGET_GRACE_PERIODS:g}): {verdict(grace_periods, TARGET_GRACE_PERIODS)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
