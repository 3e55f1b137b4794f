"""Shared fixtures for daemon tests: daemons with stand-in engines, made per test; one daemon with
real vLLM CPU engines per session."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
        # Standbys have their own test (test_standby_daemon.py); here they would only share the
        # two cores with these engines.
        orchestrator={"max_restarts": 3, "backoff_initial_s": 1, "standby": False},
        extra_models={
            "broken": {
                "model": model_dir,
                "port": p3,
                "host": "127.0.0.1",
                "profile": "1g.10gb",
                "autostart": False,
                "max_model_len": 1000000,
            }
        },
    )
    d.start()
    yield d
    groups = [m["pid"] for m in d.get("/api/v1/models").json() if m["pid"]]
    assert d.terminate(timeout=120) == 0
    for pgid in groups:
        assert group_pids(pgid) == [], "a vLLM process outlived the daemon"
    assert marked_pids(root) == [], "a process the daemon started is still running"


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Make daemons (not started) with stand-in engines; afterwards stop them, kill what their
    engines left, and fail a test whose daemon logged an illegal state transition."""
    started: list[Daemon] = []

    def make(models: dict[str, dict[str, Any]], **kw: Any) -> Daemon:
        root = tmp_path / f"d{len(started)}"
        root.mkdir()
        d = Daemon(root, models, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.terminate()
        for pid in marked_pids(d.root):
            os.kill(pid, signal.SIGKILL)
    for d in started:
        # The daemon logs an illegal state transition and carries on: here it fails.
        assert "illegal engine state transition" not in d.log(), d.log()[-4000:]
        assert "illegal standby state transition" not in d.log(), d.log()[-4000:]
