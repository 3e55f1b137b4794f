"""What the practicum's phases share: running and recording commands, watching engines.

Split from practicum.py so the restart timings (practicum_restarts.py) use the same records.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from orchestrator.client import ControlClient, ControlError
from orchestrator.practicum import startup_phases as vllm_startup
from orchestrator.practicum.session import Session, Setup

SESSION_DIR = "session"
# Seconds per warm engine start on the H200 (gpu-vllm.md: 63-77 s); the first start of a fresh
# machine pays compile, JIT and byte-code too.
WARM_START_S = 75.0
COLD_START_S = 200.0


def json_line(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


class Recorder:
    """Runs the phase's commands and writes down what ran, for how long, and what it wrote."""

    def __init__(self, results: Path, phase: str, src: Path, python: str) -> None:
        self.results = results
        self.phase = phase
        self.dir = results / phase
        self.dir.mkdir(parents=True, exist_ok=True)
        self.src = src
        self.python = python
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[practicum {self.phase} +{elapsed:5.0f}s] {text}", flush=True)

    def estimate(self, seconds: float, what: str) -> None:
        flag = "" if seconds <= 540 else "  (over 9 min: split it, see --help)"
        self.say(f"estimate {seconds / 60:.1f} min: {what}{flag}")

    def path(self, name: str) -> Path:
        return self.dir / name

    def record(
        self,
        label: str,
        argv: list[str],
        seconds: float,
        code: int | None,
        outputs: list[Path],
        **extra: Any,
    ) -> None:
        json_line(
            self.results / "commands.jsonl",
            {
                "phase": self.phase,
                "label": label,
                "argv": argv,
                "command": shlex.join(argv),
                "seconds": round(seconds, 1),
                "exit_code": code,
                "outputs": [str(p.relative_to(self.results)) for p in outputs if p.exists()],
                "at": time.time(),
                **extra,
            },
        )

    def run(self, label: str, argv: list[str], outputs: list[Path], timeout: float) -> int:
        """Run a command to completion, its output in PHASE/LABEL.log; never raises on failure."""
        self.say(f"{label}: {shlex.join(argv)}")
        started = time.monotonic()
        with self.path(f"{label}.log").open("w") as log:
            try:
                code = subprocess.run(
                    argv,
                    cwd=self.src,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
        seconds = time.monotonic() - started
        self.record(label, argv, seconds, code, [*outputs, self.path(f"{label}.log")])
        self.say(f"{label}: exit {code} after {seconds:.0f} s")
        return -1 if code is None else code

    @contextmanager
    def background(self, label: str, argv: list[str], outputs: list[Path]) -> Iterator[None]:
        """A command that runs while the block runs (monitor), stopped with SIGINT after it."""
        self.say(f"{label} (background): {shlex.join(argv)}")
        started = time.monotonic()
        with self.path(f"{label}.log").open("w") as log:
            proc = subprocess.Popen(argv, cwd=self.src, stdout=log, stderr=subprocess.STDOUT)
            try:
                yield
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    code: int | None = proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
        self.record(
            label,
            argv,
            time.monotonic() - started,
            code,
            [*outputs, self.path(f"{label}.log")],
            background=True,
        )

    def orchestrator(self, *args: str) -> list[str]:
        return [self.python, "-m", "orchestrator", *args]


def process_start(pid: int) -> float | None:
    """When a process started (epoch seconds), from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, IndexError):
        return None
    return boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")


def record_startup(
    results: Path,
    session: Session,
    name: str,
    context: dict[str, Any],
    launched: float | None,
    ready: float | None,
) -> dict[str, Any]:
    """Parse the model's latest launch from its engine log and append it to startups.jsonl."""
    startup = vllm_startup.latest(session.engine_log(name), launched=launched, ready=ready)
    record = {"model": name, **context, **startup.to_json()}
    json_line(results / "startups.jsonl", record)
    return record


def watch_until_ready(
    control: ControlClient,
    name: str,
    old_pid: int | None,
    timeout: float,
    since: float | None = None,
) -> dict[str, Any]:
    """Poll a model until a new engine (pid != old_pid) is ready; times of each step seen."""
    since = time.time() if since is None else since
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = control.model(name)
        now = time.time()
        state, pid = status["state"], status.get("pid")
        if state != "ready" and "left_ready_s" not in seen:
            seen["left_ready_s"] = round(now - since, 3)
        if pid and pid != old_pid and "pid" not in seen:
            seen["pid"] = pid
            seen["launched"] = process_start(pid) or now
            seen["launch_seen_s"] = round(now - since, 3)
        if state == "ready" and pid and pid != old_pid:
            seen["ready"] = now
            seen["ready_s"] = round(now - since, 3)
            seen["status"] = status
            return seen
        if state == "failed":
            raise ControlError(f"{name} failed: {status.get('reason')}")
        time.sleep(0.1)
    raise ControlError(f"{name} not ready after {timeout:.0f} s: {seen}")


def first_completion(base: str, served: str, timeout: float = 60) -> float:
    """Seconds until the engine answers one completion (ready is /health; serving is this)."""
    started = time.monotonic()
    body = {"model": served, "prompt": "Hello", "max_tokens": 1}
    while True:
        try:
            r = httpx.post(f"{base}/v1/completions", json=body, timeout=10)
            if r.status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            return float("nan")
        time.sleep(0.05)


def setup_from(args: argparse.Namespace) -> Setup:
    """The engines' set-up from the command line (--engine-venv, --model, --cpu, ...)."""
    env = dict(kv.split("=", 1) for kv in args.engine_env)
    return Setup(
        venv=Path(args.engine_venv),
        model=Path(args.model),
        cpu=args.cpu,
        utilization=args.utilization,
        max_model_len=args.max_model_len,
        env=env,
        command=json.loads(args.engine_command) if args.engine_command else None,
    )


def session_from(args: argparse.Namespace) -> Session:
    """The daemon that `up` left running for these results."""
    path = Path(args.results) / SESSION_DIR / "session.json"
    if not path.exists():
        raise SystemExit(f"no daemon session in {path.parent}: run the `up` phase first")
    session = Session.load(path)
    if not session.alive():
        raise SystemExit(f"the daemon of {path} (pid {session.pid}) is gone: run `up` again")
    return session
