"""Shared harness of the daemon benchmarks: the real daemon supervising 56 stand-in engines.

The daemon runs as a subprocess on the 8 x H100 (7 x 1g.10gb) topology. Its stdout is a pipe read by
a thread that stamps every line with time.time() the moment it arrives, so state transitions
("m07: starting -> ready", logged synchronously when the state changes) get sub-millisecond
daemon-side timestamps without adding anything to the daemon or loading its control plane. Each
engine appends its own events ("started", "ready", "exit", with time.time()) to a JSON-lines file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from orchestrator.config.write import render_models_toml
from tests.daemon_harness import STANDIN, TOPOLOGIES, free_ports

TOPOLOGY = TOPOLOGIES / "8xh100-7x1g.toml"
ENGINES = 56
REPO = Path(__file__).resolve().parents[2]
_TRANSITION = re.compile(r"orchestrator\.engine\.lifecycle: (\S+): (\w+) -> (\w+)$")


@dataclass(frozen=True)
class Transition:
    t: float
    model: str
    old: str
    new: str


def stats_ms(values_s: Iterable[float]) -> dict[str, float | int]:
    """n, min, median, p90, p99 (nearest rank), max and mean of durations in seconds, as ms."""
    v = sorted(values_s)
    if not v:
        return {"n": 0}

    def rank(p: float) -> float:
        return v[min(len(v) - 1, max(0, round(p * len(v) + 0.5) - 1))]

    return {
        "n": len(v),
        "min_ms": round(v[0] * 1000, 2),
        "median_ms": round(statistics.median(v) * 1000, 2),
        "p90_ms": round(rank(0.90) * 1000, 2),
        "p99_ms": round(rank(0.99) * 1000, 2),
        "max_ms": round(v[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(v) * 1000, 2),
    }


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), in %."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
    except OSError:
        return None
    return float(some[1].partition("=")[2])


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"


def report(benchmark: str, result: Mapping[str, Any], summary: str) -> None:
    """Print the numbers as JSON, then one summary line with the machine's load."""
    out = {
        "benchmark": benchmark,
        **result,
        "load_avg_end": load_avg(),
        "cpu_pressure_pct_end": cpu_pressure(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    load = " ".join(map(str, out["load_avg_end"]))
    print(f"{benchmark}: {summary} [load {load}, cpu pressure {out['cpu_pressure_pct_end']}%]")


class Fleet:
    """A daemon subprocess plus its engines; `env_for(i)` gives engine i's stand-in knobs."""

    def __init__(
        self,
        n: int = ENGINES,
        env_for: Callable[[int], Mapping[str, str]] = lambda i: {},
        orchestrator: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mig-perf-"))
        # The --model value is unique to this fleet, to find our engines among other runs' ones.
        self.tag = f"perf-{self.root.name}"
        self.names = [f"m{i:02d}" for i in range(n)]
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.transitions: list[Transition] = []
        self.states: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        (self.root / "events").mkdir()
        orch = {
            "listen": f"127.0.0.1:{self.port}",
            "state_dir": str(self.root / "state"),
            "log_dir": str(self.root / "logs"),
            "topology": str(TOPOLOGY),
            "engine_command": [sys.executable, str(STANDIN)],
            "stop_grace_s": 2.0,
            "standby": False,  # these measure the daemon; restart_time.py measures standbys
            **(orchestrator or {}),
        }
        models = {
            name: {
                "model": self.tag,
                "port": port,
                "host": "127.0.0.1",
                "profile": "1g.10gb",
                "env": {"STANDIN_STATE_FILE": str(self.events_path(name)), **env_for(i)},
            }
            for i, (name, port) in enumerate(zip(self.names, free_ports(n), strict=True))
        }
        self.config_path = self.root / "models.toml"
        self.config_path.write_text(render_models_toml(orch, models))

    def events_path(self, name: str) -> Path:
        return self.root / "events" / f"{name}.jsonl"

    def events(self, name: str, kind: str | None = None) -> list[dict[str, Any]]:
        try:
            text = self.events_path(name).read_text()
        except FileNotFoundError:
            return []
        # The last line may be half written by an engine still running.
        lines = text.split("\n")[:-1]
        got = [json.loads(line) for line in lines if line.strip()]
        return [e for e in got if kind is None or e["event"] == kind]

    # ----- the daemon -----

    def start(self) -> float:
        """Launch the daemon; returns the wall-clock time of the launch."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("INVOCATION_ID", None)
        argv = [sys.executable, "-m", "orchestrator", "serve", "--config", str(self.config_path)]
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self.started_at

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.root / "daemon.log", "ab") as tee:
            for raw in self.proc.stdout:
                t = time.time()
                tee.write(raw)
                tee.flush()
                m = _TRANSITION.search(raw.decode(errors="replace").rstrip())
                if m is None:
                    continue
                with self._cond:
                    self.transitions.append(Transition(t, m[1], m[2], m[3]))
                    self.states[m[1]] = m[3]
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")

    def wait_control_plane(self, timeout: float = 30) -> float:
        """Wait for /healthz to answer; returns when it first did."""
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False) as c:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited:\n{self.log()[-3000:]}")
                try:
                    if c.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        return time.time()
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no control plane after {timeout}s:\n{self.log()[-3000:]}")
                time.sleep(0.005)

    def wait(self, pred: Callable[[Fleet], bool], timeout: float, what: str) -> None:
        """Block until pred(self) holds, re-checked on every state transition."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    raise RuntimeError(f"timed out waiting for {what}; states {self.count()}")
                self._cond.wait(min(left, 0.5))

    def count(self, state: str = "") -> dict[str, int] | int:
        """How many engines are in `state`, or a histogram of all states when none is named."""
        if state:
            return sum(1 for s in self.states.values() if s == state)
        hist: dict[str, int] = {}
        for s in self.states.values():
            hist[s] = hist.get(s, 0) + 1
        return hist

    def all_in(self, state: str) -> bool:
        return len(self.states) == len(self.names) and self.count(state) == len(self.names)

    def wait_all(self, state: str, timeout: float = 60) -> float:
        """Wait until every engine is in `state`; returns the stamp of the last transition."""
        self.wait(lambda f: f.all_in(state), timeout, f"all engines {state}")
        with self._cond:
            return max(t.t for t in self.transitions if t.new == state)

    def terminate(self, timeout: float = 60) -> float:
        """SIGTERM the daemon and wait for it; returns the seconds until it exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        took = time.monotonic() - t0
        if self._reader is not None:
            self._reader.join(5)
        return took

    def leftovers(self) -> list[int]:
        """Live processes of this fleet's engines (found by the fleet's unique --model tag)."""
        tag = self.tag.encode()
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
            except OSError:
                continue
            if tag in argv and not zombie:
                found.append(int(entry.name))
        return found

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if os.environ.get("PERF_KEEP") is None:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            print(f"kept {self.root}", file=sys.stderr)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
