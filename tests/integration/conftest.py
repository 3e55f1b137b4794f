"""Shared fixtures for daemon tests: one daemon with real vLLM CPU engines per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import engine_env
from orchestrator.demo import cpu_config_text
from tests.daemon_harness import TOPOLOGIES, Daemon, free_ports, group_pids


@pytest.fixture(scope="session")
def vllm_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with real engines: `cached` (prefix caching on, 3g.40gb) and `nocache` (off,
    2g.20gb) autostart; `broken` (impossible max_model_len) waits to be started. Tests leave
    `cached` and `nocache` ready, except test_vllm_e2e's last ones, which run after the rest."""
    try:
        venv = engine_env.ensure_cpu_venv(engine_env.default_venv()).parent.parent
    except engine_env.EngineEnvError as e:
        pytest.skip(f"no vLLM CPU engine venv: {e}")
    model_dir = engine_env.build_tiny_model(venv, engine_env.default_tiny_model_dir(seed=0))
    root = tmp_path_factory.mktemp("vllm")
    p1, p2, p3, control = free_ports(4)
    topology = root / "a100-mixed.toml"
    topology.write_text((TOPOLOGIES / "a100-mixed.toml").read_text())
    text = cpu_config_text(
        workdir=root,
        topology=topology,
        venv=venv,
        models=[
            ("cached", "coder", p1, "3g.40gb", True, model_dir),
            ("nocache", "chat", p2, "2g.20gb", False, model_dir),
        ],
        listen=f"127.0.0.1:{control}",
        extra_orchestrator="max_restarts = 3\nbackoff_initial_s = 1",
    )
    text += (
        f'\n[models.broken]\nmodel = "{model_dir}"\nport = {p3}\nhost = "127.0.0.1"\n'
        'profile = "1g.10gb"\nautostart = false\nmax_model_len = 1000000\n'
    )
    d = Daemon(root, {}, topology=topology, config_text=text)
    d.port, d.url = control, f"http://127.0.0.1:{control}"
    d.start()
    yield d
    groups = [m["pid"] for m in d.get("/api/v1/models").json() if m["pid"]]
    assert d.terminate(timeout=120) == 0
    for pgid in groups:
        assert group_pids(pgid) == [], "a vLLM process outlived the daemon"
    leftovers = [p for p in _vllm_pids() if str(root) in _cmdline(p) or _in_model(p, model_dir)]
    assert leftovers == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _in_model(pid: int, model_dir: Path) -> bool:
    return str(model_dir) in _cmdline(pid)


def _vllm_pids() -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                comm = Path(f"/proc/{entry.name}/comm").read_text()
            except OSError:
                continue
            if comm.startswith("VLLM") or "vllm" in _cmdline(int(entry.name)):
                out.append(int(entry.name))
    return out
