"""Standbys under the real daemon (a subprocess) with stand-in engines run by the real launcher:
restarts and crashes run in the standby's process, status and /metrics show it, a reload that
changes the environment replaces it, and nothing is left after SIGTERM or kill -9 + restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from orchestrator.engine.standby.channel import LAUNCHER
from tests.daemon_harness import REPO, Daemon, free_ports, group_pids, marked_pids, wait_until
from tests.integration.test_daemon import events, model

pytestmark = pytest.mark.slow
ON = {"standby": True}


def standby_ready(d: Daemon, name: str, not_pid: int | None = None) -> dict[str, Any]:
    """The model's status once its (next) standby is ready."""

    def ready() -> dict[str, Any] | None:
        s = d.status(name)
        sb = s["standby"]
        return s if sb["state"] == "ready" and sb["pid"] != not_pid else None

    return dict(wait_until(ready, 30, f"a ready standby of {name}"))


def cmdline(pid: int) -> list[str]:
    return psutil.Process(pid).cmdline()


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in raw if e)


def test_restart_and_crash_run_in_the_standbys_process(daemons: Any, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    state = tmp_path / "standin.jsonl"
    d = daemons(
        {"m": model(port, env={"STANDIN_STATE_FILE": str(state)})},
        orchestrator={**ON, "backoff_initial_s": 0.1},
    )
    d.start(wait_ready=["m"])
    s = standby_ready(d, "m")
    sb = s["standby"]
    # Waiting: the launcher under the engine's interpreter, holding no socket and no child.
    assert cmdline(sb["pid"])[:2] == [sys.executable, str(LAUNCHER)]
    assert "--label" in cmdline(sb["pid"]) and psutil.Process(sb["pid"]).children() == []
    assert psutil.Process(sb["pid"]).net_connections(kind="inet") == []
    assert sb["rss_bytes"] > 5 << 20 and sb["prepare_s"] is not None and sb["enabled"]
    assert environ(sb["pid"])["STANDIN_STATE_FILE"] == str(state)  # the model's environment
    assert s["last_start"]["via"] == "plain" and s["last_start"]["launch_to_ready_s"] > 0

    # The standby's memory in /metrics and in the CLI.
    page = d.get("/metrics").text
    assert 'mig_orchestrator_standby_state{model="m",' in page
    ready_line = next(ln for ln in page.splitlines() if 'state="ready"' in ln and "standby" in ln)
    assert ready_line.endswith(" 1.0")
    assert "mig_orchestrator_standby_rss_bytes{" in page
    assert 'mig_orchestrator_model_last_start_seconds{model="m"' in page and 'via="plain"' in page
    cli = subprocess.run(
        [sys.executable, "-m", "orchestrator", "status", "m", "--url", d.url],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "STANDBY" in cli.stdout and f"ready {sb['rss_bytes'] >> 20}M" in cli.stdout
    assert f"standby: ready, pid {sb['pid']}, RSS " in cli.stdout
    assert "last start: plain, EngineCore by fork (" in cli.stdout  # fork: the default

    # A restart: the engine runs in the standby's process, with the engine's own argv.
    assert d.post("/api/v1/models/m/restart").status_code == 202
    wait_until(lambda: d.status("m")["pid"] == sb["pid"], 30, "the standby to be the engine")
    s = d.wait_state("m", "ready")
    assert s["last_start"]["via"] == "standby" and s["last_start"]["cause"] == "restart"
    started = [e for e in events(state) if e["event"] == "started"]
    assert started[-1]["pid"] == sb["pid"] and started[-1]["argv"][:2] == ["--model", "stand-in"]
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        json={"model": "m", "prompt": "hello there", "max_tokens": 4},
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4

    # A crash: the next standby takes over.
    sb2 = standby_ready(d, "m", not_pid=sb["pid"])["standby"]
    psutil.Process(sb["pid"]).kill()
    wait_until(lambda: d.status("m")["pid"] == sb2["pid"], 30, "the second standby to take over")
    s = d.wait_state("m", "ready")
    assert s["restarts"] == 1 and s["last_start"]["cause"] == "retry"
    assert s["last_start"]["via"] == "standby"
    log = "\n".join(d.get("/api/v1/models/m/logs?tail=200").json()["lines"])
    assert f"starting from standby pid {sb2['pid']} (imports done)" in log
    assert "s after the standby's trigger" in log and "s after the failure" in log


def test_a_reload_that_changes_the_environment_replaces_the_standby(daemons: Any) -> None:
    (port,) = free_ports(1)
    d = daemons({"m": model(port)}, orchestrator=ON)
    d.start(wait_ready=["m"])
    old = standby_ready(d, "m")["standby"]["pid"]
    d.models["m"] = model(port, env={"NEW_SETTING": "1"})
    d.write_config()
    assert d.post("/api/v1/reload").json()["changed"] == ["m"]
    wait_until(lambda: not psutil.pid_exists(old) or group_pids(old) == [], 30, "the old standby")
    s = d.wait_state("m", "ready")
    assert s["pid"] != old and s["last_start"]["via"] == "plain"
    new = standby_ready(d, "m", not_pid=old)["standby"]["pid"]
    assert environ(new)["NEW_SETTING"] == "1"


def test_no_standby_is_left_after_daemon_sigterm(daemons: Any) -> None:
    (port,) = free_ports(1)
    d = daemons({"m": model(port)}, orchestrator=ON)
    d.start(wait_ready=["m"])
    sb = standby_ready(d, "m")["standby"]["pid"]
    assert d.terminate() == 0
    assert group_pids(sb) == [] and marked_pids(d.root) == []
    state = json.loads((d.root / "state" / "state.json").read_text())
    assert state["standbys"] == {} and state["engines"] == {}


def test_no_standby_is_left_after_daemon_kill_9_and_restart(daemons: Any) -> None:
    (port,) = free_ports(1)
    d = daemons({"m": model(port)}, orchestrator=ON)
    d.start(wait_ready=["m"])
    sb = standby_ready(d, "m")["standby"]["pid"]
    engine = d.status("m")["pid"]
    state = json.loads((d.root / "state" / "state.json").read_text())
    assert state["standbys"]["m"]["pid"] == sb  # recorded, for the next daemon
    d.kill9()
    # Its end of the channel closed with the daemon: the standby exits by itself, at once.
    wait_until(lambda: group_pids(sb) == [], 10, "the orphaned standby to exit")
    assert group_pids(engine) != []  # the engine is left for the next daemon to stop
    d.start(wait_ready=["m"])
    assert group_pids(engine) == []
    standby_ready(d, "m", not_pid=sb)
    assert d.terminate() == 0
    assert marked_pids(d.root) == []
