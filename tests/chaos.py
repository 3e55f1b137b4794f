"""Daemon chaos, for the chaos test and its benchmarks: start/stop storms, kill -9 of the daemon at
chosen moments, and the checks that afterwards no acknowledged command was lost and exactly the
wanted engines run, one tree each, with no orphan."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.daemon_harness import Daemon, engine_pids, group_pids, marked_pids, wait_until

# Engines that behave like vLLM where a daemon crash matters: an EngineCore grandchild that
# outlives a SIGKILL of its server, and no death when the daemon's end of the pipe closes.
ENGINE_ENV = {
    "STANDIN_SPAWN_GRANDCHILD": "1",
    "STANDIN_IGNORE_EPIPE": "1",
    "STANDIN_STARTUP_DELAY": "0.2",
}
TREE_SIZE = 2  # the server and its EngineCore
DESIRED = {"start": "running", "restart": "running", "stop": "stopped"}


def children(pid: int) -> set[int]:
    """Children of pid's main thread: the daemon spawns engines from its event loop's thread."""
    try:
        return set(map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split()))
    except OSError:
        return set()


def wait_spawn(pid: int, known: set[int], timeout: float) -> int | None:
    """The first child of pid not in `known` (polled every 0.5 ms), or None after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = children(pid) - known
        if new:
            return min(new)
        time.sleep(0.0005)
    return None


@dataclass
class Asked:
    """What one model was asked, as its client saw it."""

    acked: str | None = None  # the desired state the last command answered 202 set
    pending: str | None = None  # what a command sent but never answered would set

    def acceptable(self, before: set[str]) -> set[str]:
        """Desired states a daemon that lost nothing acknowledged may show afterwards."""
        base = before if self.acked is None else {self.acked}
        return base | ({self.pending} if self.pending else set())


class Storm:
    """One client thread per model sends start, stop or restart one after another with random
    gaps, so each model has at most one command in flight when the daemon dies."""

    def __init__(self, d: Daemon, names: Iterable[str], seed: str, gap_s: float = 0.15) -> None:
        self.url = d.url
        self.headers = d.headers()
        self.asked = {n: Asked() for n in names}
        self.sent = 0
        self.refused: list[str] = []
        self._seed = seed
        self._gap_s = gap_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in self.asked
        ]

    def __enter__(self) -> Storm:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _client(self, name: str) -> None:
        rng = random.Random(f"{self._seed}:{name}")
        asked = self.asked[name]
        with httpx.Client(headers=self.headers, timeout=10) as client:
            while not self._stop.is_set():
                verb = rng.choice(tuple(DESIRED))
                asked.pending = DESIRED[verb]
                try:
                    r = client.post(f"{self.url}/api/v1/models/{name}/{verb}")
                except httpx.ConnectError:
                    asked.pending = None  # never delivered: the daemon was already gone
                    return
                except httpx.HTTPError:
                    return  # the daemon died with this command in flight
                with self._lock:
                    self.sent += 1
                if r.status_code == 202:
                    asked.acked, asked.pending = asked.pending, None
                else:
                    asked.pending = None
                    self.refused.append(f"{verb} {name}: {r.status_code} {r.text}")
                self._stop.wait(rng.uniform(0, self._gap_s))


def statuses(d: Daemon) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in d.get("/api/v1/models").json()}


def settle(d: Daemon, timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Wait until every model is where its desired state leads (ready or stopped), or failed."""

    def settled() -> dict[str, dict[str, Any]] | None:
        now = statuses(d)
        done = all(m["state"] in (_goal(m), "failed") for m in now.values())
        return now if done else None

    return dict(wait_until(settled, timeout, "every model to settle", interval=0.1))


def _goal(m: dict[str, Any]) -> str:
    return "ready" if m["desired"] == "running" else "stopped"


def orphan_trees(d: Daemon, engines: dict[str, int]) -> dict[int, list[int]]:
    """Processes the daemon's engines started that belong to none of `engines` (model -> pid of
    the engine the API reports), by process group."""
    owned = {p for pid in engines.values() for p in group_pids(pid)}
    trees: dict[int, list[int]] = {}
    for pid in marked_pids(d.root):
        if pid not in owned:
            try:
                pgid = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[2])
            except (OSError, IndexError, ValueError):
                continue
            trees.setdefault(pgid, []).append(pid)
    return trees


def problems(d: Daemon, expected: dict[str, set[str]]) -> list[str]:
    """Everything wrong with a settled daemon: lost commands, wrong states, doubled or missing
    trees, orphans, and a state file that disagrees with the API."""
    found: list[str] = []
    now = statuses(d)
    engines = {n: m["pid"] for n, m in now.items() if m["state"] == "ready"}
    for name, m in sorted(now.items()):
        if m["desired"] not in expected[name]:
            found.append(
                f"{name}: desired {m['desired']}, but was asked {'/'.join(sorted(expected[name]))}"
            )
        if m["state"] != _goal(m):
            found.append(f"{name}: {m['state']} ({m['reason']}) while desired {m['desired']}")
        if name in engines:
            tree = group_pids(engines[name])
            if len(tree) != TREE_SIZE:
                found.append(f"{name}: its engine's group {engines[name]} holds {tree}")
            if engine_pids(name) != [engines[name]]:
                found.append(f"{name}: servers {engine_pids(name)}, the API says {engines[name]}")
    for pgid, pids in sorted(orphan_trees(d, engines).items()):
        found.append(f"orphan tree {pgid}: {pids}")
    state_file = d.root / "state" / "state.json"

    def saved_matches() -> bool:
        try:
            saved = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return False
        pids = {n: r["pid"] for n, r in saved["engines"].items()}
        desired = {n: m["desired"] for n, m in now.items()}
        return bool(saved["desired"] == desired and pids == engines)

    try:  # saves follow changes within a few ms
        wait_until(saved_matches, 5, "state.json to match the API")
    except AssertionError:
        found.append(f"state.json disagrees with the API: {state_file.read_text()}")
    return found


@dataclass
class ChaosRun:
    """What one chaos run did, and everything found wrong after each daemon restart."""

    seed: int
    rounds: int = 0
    daemon_kills: int = 0
    kills_after_spawn: int = 0  # 1-8 ms after the daemon spawned an engine
    engine_kills: int = 0  # engine servers killed while the daemon was down
    commands: int = 0  # start/stop/restart calls sent
    problems: list[str] = field(default_factory=list)


def run_chaos(d: Daemon, seed: int, rounds: int, storm_s: float = 1.0) -> ChaosRun:
    """Rounds of: a command storm; kill -9 of the daemon at a random moment (half the time
    1-8 ms after it spawns an engine); sometimes kill -9 of an engine's server while the daemon is
    down; restart; check. Stops at the first round with problems. Leaves the daemon running."""
    rng = random.Random(seed)
    run = ChaosRun(seed)
    names = sorted(d.models)
    expected = {n: {"running" if d.models[n].get("autostart", True) else "stopped"} for n in names}
    d.start()
    for r in range(rounds):
        assert d.proc is not None
        with Storm(d, names, f"{seed}:{r}") as storm:
            time.sleep(rng.uniform(0, storm_s))
            if rng.random() < 0.5:
                spawned = wait_spawn(d.proc.pid, children(d.proc.pid), storm_s)
                if spawned is not None:
                    time.sleep(rng.uniform(0.001, 0.008))
                    run.kills_after_spawn += 1
            d.kill9()
        run.rounds, run.daemon_kills, run.commands = (
            r + 1,
            run.daemon_kills + 1,
            run.commands + storm.sent,
        )
        expected = {n: storm.asked[n].acceptable(expected[n]) for n in names}
        servers = [p for n in names for p in engine_pids(n)]
        if servers and rng.random() < 0.5:
            os.kill(rng.choice(servers), signal.SIGKILL)  # its EngineCore lives on
            run.engine_kills += 1
        d.start()
        try:
            now = settle(d)
            found = storm.refused + problems(d, expected)
        except AssertionError as e:
            found = [str(e)]
        run.problems += [f"round {r}: {p}" for p in found]
        if found:
            break
        expected = {n: {now[n]["desired"]} for n in names}
    return run
