"""Shared fixtures for daemon tests: one daemon with real vLLM CPU engines per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon_harness import Daemon, cpu_vllm_daemon, free_ports, group_pids, marked_pids
from tests.vllm_support import engine_venv, tiny_model


@pytest.fixture(scope="session")
def vllm_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with real engines: `cached` (prefix caching on, 3g.40gb) and `nocache` (off,
    2g.20gb) autostart; `broken` (impossible max_model_len) waits to be started. Tests leave
    `cached` and `nocache` ready, except test_vllm_e2e's last ones, which run after the rest."""
    venv = engine_venv()
    model_dir = tiny_model()
    root = tmp_path_factory.mktemp("vllm")
    p1, p2, p3 = free_ports(3)
    d = cpu_vllm_daemon(
        root,
        venv,
        [
            ("cached", "coder", p1, "3g.40gb", True, model_dir),
            ("nocache", "chat", p2, "2g.20gb", False, model_dir),
        ],
        extra_orchestrator="max_restarts = 3\nbackoff_initial_s = 1",
        extra_models=(
            f'\n[models.broken]\nmodel = "{model_dir}"\nport = {p3}\nhost = "127.0.0.1"\n'
            'profile = "1g.10gb"\nautostart = false\nmax_model_len = 1000000\n'
        ),
    )
    d.start()
    yield d
    groups = [m["pid"] for m in d.get("/api/v1/models").json() if m["pid"]]
    assert d.terminate(timeout=120) == 0
    for pgid in groups:
        assert group_pids(pgid) == [], "a vLLM process outlived the daemon"
    assert marked_pids(root) == [], "a process the daemon started is still running"
