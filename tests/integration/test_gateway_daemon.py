"""The gateway under the real daemon, in front of stand-in engines: routed by model, states as
503s, and isolated: its kill -9 touches no engine and not the daemon, and it comes back."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.daemon.gateway_keeper import ENV
from orchestrator.engine import marker
from orchestrator.engine.process import find_by_env
from tests.daemon_harness import Daemon, free_ports, marked_pids, standin_model, wait_until

pytestmark = pytest.mark.slow


def _gateway_pids(state_dir: Path) -> list[int]:
    owner = marker.DaemonMark.load(state_dir).tag
    return sorted(t.proc.pid for t in find_by_env(ENV, owner) if t.value == owner)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, str]]:
    alice, bob, gw = free_ports(3)
    d = Daemon(
        tmp_path,
        {
            "alice": standin_model(alice, served_model_name="alice-llm"),
            "bob": standin_model(bob),
        },
    )
    d.config_path.write_text(
        d.config_path.read_text()
        + f'\n[gateway]\nenabled = true\nlisten = "127.0.0.1:{gw}"\nrefresh_s = 0.2\n'
    )
    d.start(wait_ready=["alice", "bob"])
    try:
        yield d, f"http://127.0.0.1:{gw}"
    finally:
        d.terminate()
        assert _gateway_pids(tmp_path / "state") == []  # stopped with the daemon
        for pid in marked_pids(tmp_path):
            os.kill(pid, signal.SIGKILL)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _complete(url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "hello there", "max_tokens": 4}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=10)


def test_routes_by_served_name_and_reports_states(daemon: tuple[Daemon, str]) -> None:
    d, url = daemon
    wait_until(lambda: _up(url), 20, "the gateway")
    names = lambda: sorted(m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"])  # noqa: E731
    wait_until(lambda: names() == ["alice-llm", "bob"], 10, "both models listed")
    # Listed models may still be "starting" in the gateway's table, read every refresh_s.
    served = lambda m: _complete(url, m).status_code == 200  # noqa: E731
    wait_until(lambda: served("alice-llm") and served("bob"), 10, "both served")
    assert _complete(url, "alice").status_code == 404  # the table name is not what clients send
    assert d.post("/api/v1/models/bob/stop").status_code == 202
    d.wait_state("bob", "stopped")
    # The gateway reads states every refresh_s: "stopping" may come first, then "stopped".
    wait_until(lambda: "stopped" in _complete(url, "bob").text, 10, "stopped")
    assert _complete(url, "bob").status_code == 503
    assert _complete(url, "alice-llm").status_code == 200


def test_gateway_kill9_touches_no_engine_and_comes_back(daemon: tuple[Daemon, str]) -> None:
    d, url = daemon
    wait_until(lambda: _up(url), 20, "the gateway")
    wait_until(lambda: _complete(url, "bob").status_code == 200, 10, "routing")
    state_dir = d.root / "state"
    (gateway,) = _gateway_pids(state_dir)
    engines = {n: d.status(n)["pid"] for n in ("alice", "bob")}
    os.kill(gateway, signal.SIGKILL)
    new = wait_until(
        lambda: (p := _gateway_pids(state_dir)) and p[0] != gateway and _up(url) and p,
        30,
        "a new gateway",
    )
    assert len(new) == 1
    assert {n: d.status(n)["pid"] for n in ("alice", "bob")} == engines
    assert all(d.status(n)["state"] == "ready" for n in engines)
    assert d.proc is not None and d.proc.poll() is None
    wait_until(lambda: _complete(url, "alice-llm").status_code == 200, 10, "requests again")
    assert "gateway: restarting" in d.log()


def test_daemon_crash_leaves_a_gateway_the_next_daemon_replaces(
    daemon: tuple[Daemon, str],
) -> None:
    d, url = daemon
    wait_until(lambda: _up(url), 20, "the gateway")
    state_dir = d.root / "state"
    (old,) = _gateway_pids(state_dir)
    # The gateway's table has seen bob ready (it reads the daemon every refresh_s) before the kill.
    wait_until(lambda: _complete(url, "bob").status_code == 200, 10, "bob through the gateway")
    d.kill9()
    # The engines and the gateway outlive the daemon: students keep being served.
    r = _complete(url, "bob")
    assert r.status_code == 200, r.text
    d.start(wait_ready=["alice", "bob"])
    wait_until(lambda: (p := _gateway_pids(state_dir)) and old not in p and _up(url), 30, "new")
    log = d.log()
    assert "gateway: stopping one left by an earlier daemon" in log
    # The engines' leftover scan did not take the gateway for an engine.
    engine_stops = [line for line in log.splitlines() if "stopping engine of" in line]
    assert not any(str(old) in line for line in engine_stops)
    wait_until(lambda: _complete(url, "bob").status_code == 200, 10, "requests again")
