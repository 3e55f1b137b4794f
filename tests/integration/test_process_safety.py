"""Engine processes under daemon crashes (orphans, restarts, start-up deaths): the real daemon as
a subprocess, stand-in engines with an EngineCore grandchild that outlive a closed stdout, as
vLLM's do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos import ENGINE_ENV
from tests.daemon_harness import (
    REPO,
    events,
    free_ports,
    group_pids,
    marked_pids,
    standin_model,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("state_file", ["kept", "lost"])
def test_an_engine_core_orphaned_while_the_daemon_was_down_is_stopped(
    daemons, state_file: str
) -> None:
    """Item 1: the engine's main process dies while the daemon is down; the restarted daemon
    stops its EngineCore by its mark, whether or not state.json still records the engine."""
    (port,) = free_ports(1)
    d = daemons({"m": standin_model(port, env=ENGINE_ENV)})
    d.start(wait_ready=["m"])
    old = d.status("m")["pid"]
    (core,) = [p for p in group_pids(old) if p != old]
    d.kill9()
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: group_pids(old) == [core], 5, "the server to die, its EngineCore not")
    if state_file == "lost":
        (d.root / "state" / "state.json").unlink()
    d.start(wait_ready=["m"])
    new = d.status("m")["pid"]
    assert group_pids(old) == []
    assert marked_pids(d.root) == sorted(group_pids(new))
    assert f"stopping engine of m left by an earlier daemon: group {old}" in d.log()


def test_a_command_answered_202_is_on_disk_and_survives_a_kill_at_once(daemons) -> None:
    """Item 2: the desired state a start or stop asked for is saved before the 202, not later."""
    (port,) = free_ports(1)
    d = daemons({"m": standin_model(port, autostart=False, env=ENGINE_ENV)})
    d.start()
    saved = d.root / "state" / "state.json"
    for verb, desired in [("start", "running"), ("stop", "stopped")] * 3 + [("start", "running")]:
        assert d.post(f"/api/v1/models/m/{verb}").status_code == 202
        assert json.loads(saved.read_text())["desired"] == {"m": desired}, verb
    d.kill9()
    d.start(wait_ready=["m"])
    assert d.status("m")["desired"] == "running"
    assert marked_pids(d.root) == sorted(group_pids(d.status("m")["pid"]))


def test_an_engine_dying_during_start_up_loses_its_engine_core_at_once(
    daemons, tmp_path: Path
) -> None:
    """Item 3: the tree of an engine whose main process died during start-up gets SIGTERM at
    once, not SIGKILL after the whole grace period, so its replacement starts at once too."""
    state = tmp_path / "events.jsonl"
    (port,) = free_ports(1)
    env = {**ENGINE_ENV, "STANDIN_STARTUP_DELAY": "60", "STANDIN_STATE_FILE": str(state)}
    d = daemons({"m": standin_model(port, env=env)}, orchestrator={"stop_grace_s": 5.0})
    d.start()
    (core,) = wait_until(
        lambda: [e["pid"] for e in events(state) if e["event"] == "grandchild"], 10, "EngineCore"
    )
    server = d.wait_state("m", "starting")["pid"]
    killed = time.monotonic()
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: core not in group_pids(server), 10, "the EngineCore to go")
    core_gone = time.monotonic() - killed
    replacement = wait_until(
        lambda: [e["pid"] for e in events(state) if e["event"] == "started" and e["pid"] != server],
        10,
        "a replacement engine",
    )
    replaced = time.monotonic() - killed
    assert core_gone < 2.5, f"EngineCore lived {core_gone:.2f}s after its server died"
    assert replaced < 4.0, f"replacement {replacement} took {replaced:.2f}s"
    assert "still running after 5s grace, SIGKILL" not in "\n".join(
        d.get("/api/v1/models/m/logs?tail=50").json()["lines"]
    )


def test_a_second_daemon_on_the_same_state_dir_is_refused_and_stops_nothing(daemons) -> None:
    """Its start-up would otherwise stop the first daemon's engines as leftovers."""
    (port,) = free_ports(1)
    d = daemons({"m": standin_model(port, env=ENGINE_ENV)})
    d.start(wait_ready=["m"])
    pid = d.status("m")["pid"]
    assert d.proc is not None
    second = subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve", "--config", str(d.config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1, second.stderr
    assert f"another daemon (pid {d.proc.pid}) is using state_dir" in second.stderr
    assert d.status("m")["state"] == "ready" and d.status("m")["pid"] == pid
    assert marked_pids(d.root) == sorted(group_pids(pid))
