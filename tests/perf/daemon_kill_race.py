"""The spawn/state-save race: kill -9 the daemon 1-8 ms after it spawns an engine, then restart it.

Run: .venv/bin/python -m tests.perf.daemon_kill_race [--cases 48]
Each case is a fresh daemon with one model (autostart off) whose stand-in has an EngineCore
grandchild and outlives a closed stdout, as vLLM does. POST start; the daemon is killed d ms
(1..8, cycling) after the engine process appears; a new daemon starts on the same state and the
model settles. Counted per case: orphan trees (processes the engines started that no engine the
API reports owns), the model's final state, and whether a start answered 202 was lost.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.chaos import ENGINE_ENV, children, orphan_trees, statuses, wait_spawn
from tests.daemon_harness import Daemon, free_ports, marked_pids, wait_until
from tests.perf._fleet import load_avg, report


def _settled(d: Daemon) -> dict[str, Any]:
    """The model once it is ready or failed, or stopped and still stopped 1 s later."""

    def final() -> dict[str, Any] | None:
        m = statuses(d)["m"]
        return m if m["state"] in ("ready", "failed", "stopped") else None

    m = dict(wait_until(final, 30, "the model to settle", interval=0.1))
    if m["state"] == "stopped":
        time.sleep(1.0)
        m = dict(wait_until(final, 30, "the model to settle", interval=0.1))
    return m


def one_case(root: Path, delay_s: float) -> dict[str, Any]:
    (port,) = free_ports(1)
    model = {"model": "stand-in", "port": port, "host": "127.0.0.1", "autostart": False}
    d = Daemon(root, {"m": {**model, "env": ENGINE_ENV}})
    d.start()
    assert d.proc is not None
    known = children(d.proc.pid)
    answer: list[int] = []

    def start() -> None:
        with contextlib.suppress(httpx.HTTPError):
            answer.append(httpx.post(f"{d.url}/api/v1/models/m/start", timeout=10).status_code)

    client = threading.Thread(target=start)
    client.start()
    spawned = wait_spawn(d.proc.pid, known, 10)
    time.sleep(delay_s)
    acked = answer == [202]  # read before the kill: an answer racing it may not count
    d.kill9()
    client.join()
    d.start()
    try:
        m = _settled(d)
        engines = {"m": m["pid"]} if m["state"] == "ready" else {}
        orphans = orphan_trees(d, engines)
        return {
            "spawned": spawned is not None,
            "acked": acked,
            "state": m["state"],
            "reason": m["reason"] or "",
            "orphan_trees": len(orphans),
            "orphan_serving": bool(orphans) and m["state"] == "stopped",
            "lost_start": acked and m["desired"] == "stopped",
        }
    finally:
        d.terminate()
        for pid in marked_pids(root):
            os.kill(pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=48)
    args = parser.parse_args()
    load_start = load_avg()
    began = time.monotonic()
    cases = []
    with tempfile.TemporaryDirectory(prefix="kill-race-") as tmp:
        for i in range(args.cases):
            root = Path(tmp) / f"case{i}"
            root.mkdir()
            delay_ms = 1 + i % 8
            case = {"delay_ms": delay_ms, **one_case(root, delay_ms / 1000)}
            print(case, file=sys.stderr, flush=True)
            cases.append(case)
    outcomes = collections.Counter(
        "ready"
        if c["state"] == "ready"
        else ("failed: port in use" if "already in use" in c["reason"] else c["state"])
        for c in cases
    )
    result = {
        "cases": len(cases),
        "orphan_trees": sum(c["orphan_trees"] for c in cases),
        "cases_with_orphans": sum(1 for c in cases if c["orphan_trees"]),
        "stopped_while_an_orphan_serves": sum(1 for c in cases if c["orphan_serving"]),
        "acked_starts": sum(1 for c in cases if c["acked"]),
        "lost_acked_starts": sum(1 for c in cases if c["lost_start"]),
        "outcomes": dict(outcomes),
        "seconds": round(time.monotonic() - began, 1),
        "load_avg_start": load_start,
    }
    leftovers = result["orphan_trees"] + result["lost_acked_starts"]
    report("daemon_kill_race", result, f"{leftovers} orphan trees or lost starts (target 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
