"""Engine processes under daemon crashes (issue 11 items 1-3): the real daemon as a subprocess,
stand-in engines with an EngineCore grandchild that outlive a closed stdout, as vLLM's do."""

from __future__ import annotations

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
