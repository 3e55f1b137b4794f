"""A real vLLM CPU API server imported ahead in a standby, triggered with its argv, serving."""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest

from orchestrator.engine import process
from orchestrator.engine.standby.channel import Standby
from orchestrator.tooling.cpu_venv import API_SERVER_MODULE
from tests.daemon_harness import free_ports, group_pids
from tests.standby_support import Drain, engine_argv, engine_env, stop_tree, wait_health
from tests.vllm_support import cpu_engine_command, tiny_model

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
