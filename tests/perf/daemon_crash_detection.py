"""Crash detection: from an engine's exit to the daemon knowing it, and to its relaunch.

Run: .venv/bin/python -m tests.perf.daemon_crash_detection
56 engines, each a server plus an orphan-to-be "EngineCore" grandchild as vLLM has, crash once
(os._exit, STANDIN_CRASH_AFTER = 6 + 0.1*i s after ready: after all are up, one at a time).
Engine side: the stand-in's "exit" event, written just before os._exit. Daemon side (stamped on
arrival, see _fleet), the engine's transitions after it: the first one out of "ready" (the
daemon knows: it no longer reports the engine ready), "-> backoff" (the orphan is cleaned up)
and "backoff -> starting" (relaunch under way), the last minus the backoff (1 ms). Also shown:
the relaunched engine's first event, which adds its own interpreter start.
"""

from __future__ import annotations

import sys

from tests.perf._fleet import ENGINES, Fleet, Transition, load_avg, report, stats_ms, verdict

TARGET_MEDIAN_MS = 50.0
BACKOFF_S = 0.001


def _after(fleet: Fleet, name: str, t: float, new: str = "", old: str = "") -> Transition | None:
    """The first transition of `name` stamped at or after t (into `new`, from `old`, if given)."""
    return next(
        (
            x
            for x in fleet.transitions
            if x.model == name and x.t >= t and new in ("", x.new) and old in ("", x.old)
        ),
        None,
    )


def _first_crash(fleet: Fleet, name: str) -> float | None:
    return next((e["t"] for e in fleet.events(name, "exit") if e["reason"] == "crash"), None)


def main() -> int:
    load_start = load_avg()
    known, cleaned, relaunch, new_process = [], [], [], []
    not_seen_ready = 0
    with Fleet(
        env_for=lambda i: {
            "STANDIN_CRASH_AFTER": str(round(6.0 + 0.1 * i, 3)),
            "STANDIN_SPAWN_GRANDCHILD": "1",
        },
        orchestrator={
            "backoff_initial_s": BACKOFF_S,
            "backoff_max_s": BACKOFF_S,
            "max_restarts": 1000,
        },
    ) as fleet:
        fleet.start()
        fleet.wait_control_plane()

        def relaunched(f: Fleet, name: str) -> bool:
            crash = _first_crash(f, name)
            return crash is not None and _after(f, name, crash, "starting", "backoff") is not None

        fleet.wait(
            lambda f: all(relaunched(f, n) for n in f.names),
            90,
            "every engine to crash and be relaunched",
        )
        for name in fleet.names:
            crash = _first_crash(fleet, name)
            assert crash is not None
            first = _after(fleet, name, crash)
            down = _after(fleet, name, crash, "backoff")
            assert first is not None and down is not None
            up = _after(fleet, name, down.t, "starting", "backoff")
            assert up is not None
            if first.old != "ready":
                not_seen_ready += 1  # the daemon had not yet seen this engine ready
            known.append(first.t - crash)
            cleaned.append(down.t - crash)
            relaunch.append(up.t - crash - BACKOFF_S)
            started = [e["t"] for e in fleet.events(name, "started") if e["t"] > crash]
            if started:
                new_process.append(started[0] - crash - BACKOFF_S)
    k, r = stats_ms(known), stats_ms(relaunch)
    result = {
        "engines": ENGINES,
        "method": "engine 'exit' event -> daemon transition lines; backoff subtracted",
        "backoff_s": BACKOFF_S,
        "exit_to_not_ready": k,
        "exit_to_cleaned_up": stats_ms(cleaned),
        "exit_to_relaunch": r,
        "exit_to_new_engine_first_line": stats_ms(new_process),
        "crashed_before_daemon_saw_ready": not_seen_ready,
        "target_median_ms": TARGET_MEDIAN_MS,
        "load_avg_start": load_start,
    }
    worst = max(k["median_ms"], r["median_ms"])
    report(
        "daemon_crash_detection",
        result,
        f"exit->known median {k['median_ms']} ms (p99 {k['p99_ms']}), exit->relaunch median "
        f"{r['median_ms']} ms (p99 {r['p99_ms']}) over {k['n']} crashes; target median <= "
        f"{TARGET_MEDIAN_MS:g} ms: {verdict(worst, TARGET_MEDIAN_MS)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
