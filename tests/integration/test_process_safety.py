"""Engine processes under daemon crashes (issue 11 items 1-3): the real daemon as a subprocess,
stand-in engines with an EngineCore grandchild that outlive a closed stdout, as vLLM's do."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.chaos import ENGINE_ENV
from tests.daemon_harness import free_ports, group_pids, marked_pids, standin_model, wait_until

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
