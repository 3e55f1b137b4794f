"""One real Engine in the test's event loop, on fake processes (tests/fake_processes.py) with a
real /health server (tests/health_server.py) on its port."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from orchestrator.config import Config, OrchestratorSettings, parse_config
from orchestrator.config.write import render_models_toml
from orchestrator.engine.launch import build_launch
from orchestrator.engine.lifecycle import Engine, EngineContext, EngineSpec
from orchestrator.engine.logfile import EngineLog
from orchestrator.engine.standby.slot import StandbySettings
from orchestrator.engine.states import State
from orchestrator.gpu.inventory import Slice
from tests.fake_processes import FakeProcesses
from tests.health_server import OK, HealthServer

# Small enough that a whole crash-restart cycle takes milliseconds: below what models.toml
# accepts (health_interval_s >= 0.5 keeps a real daemon from spinning), so applied after parsing.
FAST: dict[str, Any] = {
    "health_interval_s": 0.02,
    "health_timeout_s": 0.2,
    "unhealthy_threshold": 2,
    "startup_timeout_s": 5.0,
    "stop_grace_s": 0.2,
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.04,
    "max_restarts": 3,
    "restart_window_s": 60.0,
    "memory_release_timeout_s": 5.0,
}


def config(root: Path, models: dict[str, dict[str, Any]], **orchestrator: Any) -> Config:
    """A models.toml for `models` (name -> port and other fields) with a fake engine command
    and FAST settings."""
    orch = {
        "state_dir": str(root / "state"),
        "log_dir": str(root / "logs"),
        "engine_command": ["fake-vllm", "serve"],
    }
    full = {n: {"model": "m", "host": "127.0.0.1", **m} for n, m in models.items()}
    cfg = parse_config(render_models_toml(orch, full))
    fast = cfg.orchestrator.model_copy(update={**FAST, **orchestrator})
    return cfg.model_copy(update={"orchestrator": fast})


async def wait_for(pred: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class EngineHost:
    """What a supervisor gives one engine: its context, the reaper's pid map, slice memory."""

    def __init__(self, root: Path, health: HealthServer, **settings: Any) -> None:
        self.root = root
        self.health = health
        self.fake = FakeProcesses(on_exit=self._exited)
        self.tracked: dict[int, Engine] = {}
        self.saves = 0
        self.on_change: list[Callable[[], None]] = []  # run at every change, as a save is
        self.memory: tuple[int, int] | None = None  # what NVML shows for the slice
        self.slice_locks: dict[str, asyncio.Lock] = {}
        self.cfg = config(root, {"m": {"port": health.port}}, **settings)
        self.ctx = EngineContext(
            settings=self.cfg.orchestrator,
            slice_lock=lambda uuid: self.slice_locks.setdefault(uuid, asyncio.Lock()),
            slice_memory=self._slice_memory,
            track=self._track,
            changed=self._changed,
            ops=self.fake,
        )
        o = self.cfg.orchestrator
        self.engine = Engine(
            self.spec(), self.ctx, EngineLog(o.log_dir / "m.log", o.log_max_bytes, o.log_backups)
        )

    @property
    def settings(self) -> OrchestratorSettings:
        return self.cfg.orchestrator

    def spec(self, slc: Slice | None = None, shared: bool = False, **overrides: Any) -> EngineSpec:
        return EngineSpec(
            name="m",
            model="m",
            served_model_name="m",
            host="127.0.0.1",
            port=self.health.port,
            slice=slc,
            shared_slice=shared,
            launch=build_launch(self.cfg, "m", slc, overrides, base_env={}),
            settings=self.cfg.effective_settings("m", overrides),
            overrides=dict(overrides),
            startup_timeout_s=self.settings.startup_timeout_s,
            standby=StandbySettings.of(self.cfg, "m"),
        )

    def pid(self) -> int:
        assert self.engine.status().pid is not None
        return self.engine.status().pid

    async def reach(self, *states: State, timeout: float = 5.0) -> None:
        await wait_for(lambda: self.engine.state in states, f"state {states}", timeout)

    def _exited(self, pid: int, status: int) -> None:
        engine = self.tracked.pop(pid, None)
        if engine is not None:
            engine.on_exit(pid, status)

    def _track(self, pid: int, engine: Engine | None) -> None:
        if engine is None:
            self.tracked.pop(pid, None)
        else:
            self.tracked[pid] = engine

    def _changed(self) -> None:
        self.saves += 1
        for fn in self.on_change:
            fn()

    async def _slice_memory(self, uuid: str) -> tuple[int, int] | None:
        return self.memory


@contextlib.asynccontextmanager
async def engine_host(
    root: Path, answer: bytes | None = OK, **settings: Any
) -> AsyncIterator[EngineHost]:
    """An EngineHost; on exit its engine is stopped and every fake pipe closed."""
    async with HealthServer(answer).running() as health:
        host = EngineHost(root, health, **settings)
        try:
            yield host
        finally:
            await host.engine.stop()
            host.engine.log.close()
            host.fake.close()
