"""The daemon fails an engine whose device is not its slice, checked once the engine is ready."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import Daemon, free_ports, marked_pids

pytestmark = pytest.mark.slow


def standin(port: int, profile: str, device_memory: str) -> dict[str, Any]:
    """A stand-in engine that logs vLLM's start-up device memory line with these figures."""
    env = {"STANDIN_DEVICE_MEMORY": device_memory}
    return {"model": "stand-in", "port": port, "host": "127.0.0.1", "profile": profile, "env": env}


@pytest.fixture
def daemon(tmp_path: Path):
    p1, p2 = free_ports(2)
    d = Daemon(
        tmp_path,
        {
            # vLLM on the whole A100 instead of its 3g.40gb slice (39.25 GiB by NVML).
            "wrong": standin(p1, "3g.40gb", "79.1/80.0"),
            # CUDA's total for a 2g.20gb slice, a little above NVML's 19.50 GiB.
            "right": standin(p2, "2g.20gb", "19.2/19.62"),
        },
    )
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.terminate()
    for pid in marked_pids(d.root):
        os.kill(pid, signal.SIGKILL)


def test_wrong_device_fails_the_model_with_both_figures(daemon: Daemon) -> None:
    daemon.start(wait_ready=["right"])
    wrong = daemon.wait_state("wrong", "failed")
    assert wrong["reason"].startswith("device check failed: vLLM sees 80.00 GiB on its device")
    assert "its slice GPU0 3g.40gb (gi 2)" in wrong["reason"]
    assert "has 39.25 GiB according to NVML" in wrong["reason"]
    assert wrong["pid"] is None and wrong["restarts"] == 0  # stopped, and not retried
    log = (daemon.root / "logs" / "right.log").read_text()
    assert (
        "[mig-orchestrator] device check: vLLM sees 19.62 GiB on its device; NVML gives its "
        "slice GPU0 2g.20gb (gi 3) 19.50 GiB"
    ) in log
    assert daemon.status("right")["state"] == "ready"
