"""Restart timings: crash to ready per variant of settings, next to plain vLLM (issue 16).

Each variant is a set of restart overrides (`compare --variant` syntax). `standby=true|false`
is a model setting, not an override: it is switched by editing the session's models.toml and a
reload, which keeps the engine running and only starts or discards its standby.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from orchestrator.bench.compare import ThreadedControl, parse_variant, restart_and_wait
from orchestrator.client import ControlError
from orchestrator.practicum import startup_phases as vllm_startup
from orchestrator.practicum.record import (
    WARM_START_S,
    Recorder,
    first_completion,
    json_line,
    record_startup,
    session_from,
    setup_from,
    watch_until_ready,
)
from orchestrator.practicum.session import Session, Setup


def _api_and_core(pid: int) -> list[int]:
    """The API server and its children (the EngineCore)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                kids.append(int(entry.name))
    return [pid, *sorted(kids)]


def _standby_settled(status: dict[str, Any]) -> bool:
    """True once the model's standby is what its settings ask: ready, or off when disabled."""
    standby = status.get("standby") or {}
    return standby.get("state") in (
        ("ready", "unavailable") if standby.get("enabled") else ("off",)
    )


def _set_standby(session: Session, name: str, on: bool) -> None:
    """`standby = on` in the model's table of the session's models.toml, then a reload."""
    lines = [ln for ln in session.config.read_text().splitlines() if not ln.startswith("standby =")]
    at = lines.index(f"[models.{name}]") + 1
    lines.insert(at, f"standby = {'true' if on else 'false'}")
    session.config.write_text("\n".join(lines) + "\n")
    with session.client() as control:
        control.reload()


def _crash(rec: Recorder, session: Session, name: str, label: str, rep: int) -> dict[str, Any]:
    port = session.ports[name]
    _await_standby(session, name)
    with session.client() as control:
        before = control.model(name)
        if before["state"] != "ready":
            raise ControlError(f"{name} is {before['state']}, not ready, before the crash")
        tree = _api_and_core(before["pid"])
        killed = time.time()
        os.kill(before["pid"], signal.SIGKILL)
        seen = watch_until_ready(control, name, before["pid"], 600, since=killed)
    serving = first_completion(f"http://127.0.0.1:{port}", name)
    startup = record_startup(
        Path(rec.results),
        session,
        name,
        {"phase": "restarts", "variant": label, "repeat": rep, "cache": "warm restart"},
        seen["launched"],
        seen["ready"],
    )
    log = session.engine_log(name).splitlines()
    notes = [ln for ln in log[-400:] if "GPU memory" in ln or "slice memory" in ln]
    result = {
        "variant": label,
        "repeat": rep,
        "killed_pids": tree,
        "crash_to_detected_s": seen.get("left_ready_s"),
        "crash_to_relaunch_s": seen.get("launch_seen_s"),
        "crash_to_ready_s": seen["ready_s"],
        "crash_to_serving_s": round(seen["ready_s"] + serving, 2),
        "memory_notes": notes[-2:],
        "phases": startup["phases"],
    }
    rec.say(f"{label} #{rep}: crash -> ready {seen['ready_s']:.1f} s")
    return result


def _direct(
    rec: Recorder, session: Session, setup: Setup, name: str, repeat: int
) -> list[dict[str, Any]]:
    """Plain vLLM, no daemon: the model's exact argv launched by hand, launch to /health."""
    with session.client() as control:
        status = control.model(name)
        control.command(name, "stop")
        control.wait_for(name, {"stopped"}, 120)
    env = {**os.environ, **setup.engine_env()}
    slice_uuid = (status.get("slice") or {}).get("uuid")
    if slice_uuid and not setup.cpu:
        env["CUDA_VISIBLE_DEVICES"] = slice_uuid
    out: list[dict[str, Any]] = []
    for rep in range(1, repeat + 1):
        with rec.path(f"direct-{rep}.log").open("w") as log:
            started = time.time()
            proc = subprocess.Popen(
                status["argv"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            ready = _wait_health(f"http://127.0.0.1:{session.ports[name]}", proc, 900)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        lines = rec.path(f"direct-{rep}.log").read_text(errors="replace").splitlines()
        startup = vllm_startup.parse(lines, launched=started, ready=ready)
        record = {
            "model": name,
            "phase": "restarts",
            "variant": "vllm-direct",
            "repeat": rep,
            "cache": "warm restart",
            **startup.to_json(),
        }
        json_line(Path(rec.results) / "startups.jsonl", record)
        ready_s = None if ready is None else round(ready - started, 2)
        out.append(
            {
                "variant": "vllm-direct",
                "repeat": rep,
                "launch_to_ready_s": ready_s,
                "phases": startup.phases(),
            }
        )
        rec.say(f"vllm-direct #{rep}: launch -> ready {ready_s} s")
        time.sleep(3)  # the killed engine's memory: let the driver release it
    rec.record(
        "vllm-direct",
        status["argv"],
        sum(o["launch_to_ready_s"] or 0 for o in out),
        0,
        [rec.path(f"direct-{i}.log") for i in range(1, repeat + 1)],
    )
    with session.client() as control:
        control.command(name, "start")
        control.wait_for(name, {"ready"}, 900)
    return out


def _wait_health(base: str, proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return time.time()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return None


def _restart(session: Session, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Restart with these overrides and wait for the new engine (bench.compare's logic)."""
    with session.client() as control:
        return asyncio.run(restart_and_wait(ThreadedControl(control), name, overrides, 900))


class _Results:
    """restarts.json, rewritten after every result so a command cut short keeps what it got."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.path.write_text(json.dumps(self.rows, indent=2) + "\n")


def _switch(
    rec: Recorder, session: Session, name: str, label: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Switch into the variant's settings, then wait until its standby is ready (or off)."""
    overrides = dict(overrides)
    standby = overrides.pop("standby", None)
    switched = time.time()
    with session.client() as control:
        status = control.model(name)
    if standby is not None and bool(standby) != status["standby"]["enabled"]:
        rec.say(f"{label}: standby {'on' if standby else 'off'} for {name} (models.toml, reload)")
        _set_standby(session, name, bool(standby))
    if overrides != (status.get("overrides") or {}):
        rec.say(f"{label}: restart {name} with {json.dumps(overrides)}")
        status = _restart(session, name, overrides)
    took = round(time.time() - switched, 2)
    status = _await_standby(session, name)
    settings = {**overrides, "standby": status["standby"]["enabled"]}
    return {"variant": label, "settings": settings, "switch_s": took}


def _await_standby(session: Session, name: str, timeout: float = 180) -> dict[str, Any]:
    """The model's status once its standby is settled: a student restarting after a while."""
    deadline = time.monotonic() + timeout
    with session.client() as control:
        while not _standby_settled(status := control.model(name)):
            if time.monotonic() > deadline:
                raise ControlError(
                    f"{name}: standby not settled in {timeout} s: {status['standby']}"
                )
            time.sleep(0.5)
    return status


def phase_restarts(args: argparse.Namespace, rec: Recorder) -> None:
    session = session_from(args)
    variants = [parse_variant(v) for v in args.variant] or [parse_variant("daemon:")]
    name = args.restart_model
    with session.client() as control:
        first = control.model(name)
    original = dict(first.get("overrides") or {})
    standby_at_first = first["standby"]["enabled"]
    switches = sum(1 for v in variants if v.settings)
    starts = switches + len(variants) * args.repeat + (2 * args.repeat if args.direct else 0)
    starts += 0 if args.no_restore or not switches else 1
    rec.estimate(
        starts * (WARM_START_S + 5),
        f"{len(variants)} variant(s) x {args.repeat} crash(es), {switches} switch(es)"
        f"{', plain vLLM without the daemon' if args.direct else ''}",
    )
    results = _Results(rec.path("restarts.json"))
    if args.direct:
        for row in _direct(rec, session, setup_from(args), name, args.repeat):
            results.add(row)
    for variant in variants:
        try:
            results.add(
                _switch(rec, session, name, variant.label, {**original, **variant.settings})
            )
        except Exception as exc:  # e.g. a setting this daemon refuses (422): go on
            results.add({"variant": variant.label, "error": str(exc)})
            rec.say(f"{variant.label}: {exc}")
            continue
        time.sleep(args.settle)
        for rep in range(1, args.repeat + 1):
            try:
                results.add(_crash(rec, session, name, variant.label, rep))
            except ControlError as exc:
                results.add({"variant": variant.label, "repeat": rep, "error": str(exc)})
    if not args.no_restore:
        _switch(rec, session, name, "restore", {**original, "standby": standby_at_first})
    argv = [sys.executable, "-m", "orchestrator.practicum.run", *sys.argv[1:]]
    rec.record(
        "restarts",
        argv,
        time.monotonic() - rec.started,
        0,
        [results.path],
        variants=[v.label for v in variants],
    )
