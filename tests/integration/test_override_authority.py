"""Who may change which override, and that accepted overrides together keep the shared-GPU cap."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.daemon_harness import TOPOLOGIES, Daemon
from tests.integration.test_security import ADMIN, ALICE, secured


def test_a_students_empty_override_keeps_the_admins(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = secured(daemons, tmp_path).start(wait_ready=["alice"])
    admin_set = {"overrides": {"env": {"COURSE_FLAG": "1"}, "extra_args": ["--seed", "7"]}}
    assert d.post("/api/v1/models/alice/restart", admin_set, token=ADMIN).status_code == 202
    d.wait_state("alice", "ready")
    # Regression: a student's {} answered 202 and wiped the admin's env and extra_args.
    r = d.post("/api/v1/models/alice/restart", {"overrides": {}}, token=ALICE)
    assert r.status_code == 202, r.text
    r = d.post("/api/v1/models/alice/restart", {"overrides": {"max_num_seqs": 8}}, token=ALICE)
    assert r.status_code == 202, r.text
    d.wait_state("alice", "ready")
    got = d.get("/api/v1/models/alice?show_env=true", token=ADMIN).json()["overrides"]
    assert got["extra_args"] == ["--seed", "7"] and got["max_num_seqs"] == 8
    assert set(got["env"]) == {"COURSE_FLAG"}
    # The admin may still clear everything.
    assert d.post("/api/v1/models/alice/restart", {"overrides": {}}, token=ADMIN).status_code == 202
    d.wait_state("alice", "ready")
    assert not d.get("/api/v1/models/alice", token=ADMIN).json()["overrides"]


def test_racing_restarts_on_a_shared_gpu_never_exceed_the_cap(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    # Stops take seconds, so alice's 0.85 is accepted but not yet applied when m1 asks for the
    # same 0.3 s later: m1 used to be checked against alice's running 0.1 and got 202 too (1.70).
    share = {
        "share_gpu": True,
        "gpu_memory_utilization": 0.1,
        "env": {"STANDIN_SIGTERM_DELAY": "3"},
    }
    d = secured(daemons, tmp_path, n_models=2, topology=TOPOLOGIES / "h100-whole.toml")
    for m in d.models.values():
        m.update(share)
    d.write_config()
    d.start(wait_ready=["alice", "m1"])
    body = {"overrides": {"gpu_memory_utilization": 0.85}}
    assert d.post("/api/v1/models/alice/restart", body, token=ALICE).status_code == 202
    time.sleep(0.3)
    r = d.post("/api/v1/models/m1/restart", body, token=ADMIN)
    assert r.status_code == 422, r.text
    assert "alice 0.85 + m1 0.85 = 1.70" in r.json()["error"]
    # Within the cap, a reload is accepted while alice's restart is still under way.
    assert d.post("/api/v1/reload", token=ADMIN).status_code == 200
    assert d.wait_state("alice", "ready")["overrides"] == {"gpu_memory_utilization": 0.85}
