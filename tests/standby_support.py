"""One real vLLM CPU engine outside the daemon, started plainly or from a standby (tests, perf)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from orchestrator.config import VllmSettings
from orchestrator.engine import process
from orchestrator.engine.launch import setting_flags
from orchestrator.inengine.standby_launcher import FORK_ENV
from orchestrator.tooling import cpu_venv

# What the daemon's CPU tests run with (tooling/demo.py's [defaults]).
CPU_SETTINGS = VllmSettings(
    max_model_len=2048, max_num_seqs=16, dtype="float32", enforce_eager=True
)


def engine_argv(command: list[str], model_dir: Path, port: int) -> list[str]:
    """The full argv of a tiny CPU engine, as the daemon would build it."""
    return [
        *command,
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
        *setting_flags(CPU_SETTINGS),
    ]


def engine_env(fork: bool = False) -> dict[str, str]:
    env = {**os.environ, **cpu_venv.cpu_engine_env()}
    env.pop(FORK_ENV, None)
    if fork:
        env[FORK_ENV] = "fork"
    return env


class Drain:
    """Reads an engine's output pipe as it comes: vLLM blocks when nobody reads it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := os.read(self.fd, 65536):
            self.data += chunk
        os.close(self.fd)

    def text(self) -> str:
        return self.data.decode(errors="replace")


async def wait_health(port: int, timeout: float, pid: int) -> float:
    """Seconds until GET /health answers 200 (polled every 50 ms); raises if `pid` exits first."""
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=2) as client, asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return time.monotonic() - t0
            if _reaped(pid):
                raise RuntimeError(f"engine {pid} exited before /health answered")
            await asyncio.sleep(0.05)


async def stop_tree(pid: int, grace: float = 30) -> list[int]:
    """SIGTERM the engine's group (SIGKILL after grace), reap it; return what survived."""
    tracked = process.descendants(pid)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        process.signal_group(pid, sig)
        process.signal_each(tracked, sig)
        deadline = time.monotonic() + wait
        while not _reaped(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # The main process reaped, the group check no longer sees its zombie.
        left = await process.wait_gone(pid, tracked, deadline)
        if not left:
            return []
    return left


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True
