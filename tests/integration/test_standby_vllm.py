"""A real vLLM CPU API server imported ahead in a standby, triggered with its argv, serving;
alone, and under the daemon, where a crashed engine comes back from its standby."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from orchestrator.engine import process
from orchestrator.engine.standby.channel import Standby
from orchestrator.tooling.cpu_venv import API_SERVER_MODULE
from tests.daemon_harness import cpu_vllm_daemon, free_ports, group_pids, marked_pids, wait_until
from tests.standby_support import Drain, engine_argv, engine_env, stop_tree, wait_health
from tests.vllm_support import cpu_engine_command, engine_venv, tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TIMEOUT = 600  # a CPU engine shares 2 cores with other tests


def listening_ports(pid: int) -> list[int]:
    conns = psutil.Process(pid).net_connections(kind="inet")
    return sorted(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN)


async def test_standby_imports_the_api_server_then_serves_completions_when_triggered() -> None:
    command = cpu_engine_command()
    model = tiny_model()
    (port,) = free_ports(1)
    sb = Standby.spawn(command, engine_env(), label="tiny")
    log = Drain(sb.output_fd)
    try:
        async with asyncio.timeout(TIMEOUT):
            ready = await sb.ready()
        assert (ready.pid, ready.mode, ready.target) == (sb.pid, "module", API_SERVER_MODULE)
        assert ready.preloaded[0] == API_SERVER_MODULE
        assert ready.failed == ()
        assert ready.rss_bytes > 200 << 20, "vLLM and torch are imported"
        # Waiting, it holds neither the port nor any socket, and has no child process.
        assert process.port_holder("127.0.0.1", port) is None
        assert listening_ports(sb.pid) == []
        assert psutil.Process(sb.pid).children() == []
        assert not ready.libcuda_loaded

        async with asyncio.timeout(60):
            assert await sb.trigger(engine_argv(command, model, port)) == "module"
        await wait_health(port, TIMEOUT, sb.pid)
        assert listening_ports(sb.pid) == [port], "the standby's own process serves"
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(
                f"http://127.0.0.1:{port}/v1/completions",
                json={"model": "tiny", "prompt": "def quicksort(", "max_tokens": 8},
            )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 8
        text = log.text()
        assert text.index("standby [tiny]: ready") < text.index("Application startup complete")
        assert "RuntimeWarning" not in text
    finally:
        left = await stop_tree(sb.pid)
    assert left == []
    assert group_pids(sb.pid) == []


async def test_a_real_standby_exits_when_the_daemon_end_closes_during_its_imports() -> None:
    sb = Standby.spawn(cpu_engine_command(), engine_env(), label="tiny")
    log = Drain(sb.output_fd)
    try:
        await asyncio.sleep(1.0)  # well inside vLLM's imports
        assert psutil.Process(sb.pid).status() != psutil.STATUS_ZOMBIE
        t0 = time.monotonic()
        sb.close()
        async with asyncio.timeout(30):
            while group_pids(sb.pid):
                await asyncio.sleep(0.02)
        assert time.monotonic() - t0 < 5
        assert "closed the channel before a trigger: exiting" in log.text()
    finally:
        await stop_tree(sb.pid, grace=1)


def test_a_crashed_engine_comes_back_from_its_standby_and_serves(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    d = cpu_vllm_daemon(
        tmp_path,
        engine_venv(),
        [("tiny", "tiny", port, "3g.40gb", True, tiny_model())],
        orchestrator={"standby": True, "backoff_initial_s": 0.1},
    )
    d.start()
    try:
        first = d.wait_state("tiny", "ready", timeout=TIMEOUT)
        assert first["last_start"]["via"] == "plain"
        sb = wait_until(
            lambda: (s := d.status("tiny")["standby"])["state"] == "ready" and s,
            TIMEOUT,
            "the standby's imports",
        )
        assert sb["rss_bytes"] > 200 << 20  # vLLM and torch imported
        # No GPU (here: no CPU engine) work in the standby: no child, no socket.
        assert psutil.Process(sb["pid"]).children() == []
        assert psutil.Process(sb["pid"]).net_connections(kind="inet") == []

        os.kill(first["pid"], signal.SIGKILL)  # the API server; its EngineCore is orphaned
        wait_until(lambda: d.status("tiny")["pid"] == sb["pid"], 120, "the standby to take over")
        s = d.wait_state("tiny", "ready", timeout=TIMEOUT)
        assert (s["pid"], s["restarts"]) == (sb["pid"], 1)
        assert s["last_start"]["via"] == "standby" and s["last_start"]["cause"] == "retry"
        assert group_pids(first["pid"]) == []  # the old tree, EngineCore included, is gone
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": "tiny", "prompt": "def quicksort(", "max_tokens": 8},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 8
        log = "\n".join(d.get("/api/v1/models/tiny/logs?tail=400").json()["lines"])
        assert f"starting from standby pid {sb['pid']} (imports done)" in log
        assert "RuntimeWarning" not in log
    finally:
        assert d.terminate(timeout=120) == 0
    assert marked_pids(tmp_path) == [], "a process the daemon started is still running"
