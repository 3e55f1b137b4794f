"""Standbys under the Supervisor in-process: recorded in state.json, stopped by the next daemon
after a crash, gone after shutdown, kept or discarded by a reload (fake processes, real SIGCHLD
reaping)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.engine.states import StandbyState, State
from orchestrator.supervisor.store import DaemonState, EngineRecord, StateStore
from orchestrator.supervisor.supervisor import Supervisor
from tests.engine_host import config, wait_for
from tests.fake_processes import FakeProc
from tests.health_server import HealthServer
from tests.supervisor_host import SupervisorHost

COMMAND = ["python3", "-m", "fakevllm"]


class Host(SupervisorHost):
    def __init__(self, root: Path, health: HealthServer) -> None:
        super().__init__(root)
        self.health = health

    def cfg(self, **model: Any) -> Config:
        m = {"port": self.health.port, "profile": "3g.40gb", **model}
        return config(self.root, {"a": m}, engine_command=COMMAND, standby=True)

    async def serving(self, cfg: Config) -> tuple[Supervisor, FakeProc]:
        """Open on `cfg`, start "a"; the supervisor and the standby once it is ready."""
        sup = await self.open_supervisor(cfg)
        await sup.autostart()
        await self.ready()
        return sup, await self.standby_ready()

    async def standby_ready(self) -> FakeProc:
        assert self.sup is not None
        slot = self.sup.engine("a").standby
        await wait_for(lambda: slot.state is StandbyState.READY, "the standby")
        (sb,) = self.fake.standbys_alive()
        return sb

    async def ready(self) -> None:
        assert self.sup is not None
        engine = self.sup.engine("a")
        await wait_for(
            lambda: engine.state is State.READY and engine.status().pid is not None, "ready"
        )


@contextlib.asynccontextmanager
async def host(root: Path) -> AsyncIterator[Host]:
    async with HealthServer().running() as health:
        h = Host(root, health)
        try:
            yield h
        finally:
            await h.close()


async def test_the_standby_is_recorded_and_gone_after_shutdown(tmp_path: Path) -> None:
    async with host(tmp_path) as h:
        sup, sb = await h.serving(h.cfg())
        await sup.flush()
        rec = h.saved()["standbys"]["a"]
        assert (rec["pid"], rec["pgid"], rec["create_time"]) == (sb.pid, sb.pid, sb.create_time)
        await sup.shutdown()
        h.sup = None
        assert [p for p in h.fake.spawned if p.alive] == []
        assert json.loads(sup.store.path.read_text())["standbys"] == {}


async def test_a_standby_left_by_a_killed_daemon_is_stopped_by_the_next_one(
    tmp_path: Path,
) -> None:
    async with host(tmp_path) as h:
        cfg = h.cfg()
        # What a daemon killed with -9 may leave: a standby that missed its channel's EOF.
        _, fd = h.fake.spawn(["python3", "launcher.py"], {})
        os.close(fd)
        (left,) = h.fake.spawned
        record = EngineRecord(left.pid, left.pid, left.create_time, None)
        StateStore(cfg.orchestrator.state_dir).save(DaemonState(standbys={"a": record}))
        sup = await h.open_supervisor(cfg)
        assert not left.alive and left.signals == [signal.SIGTERM]
        await sup.flush()
        assert h.saved()["standbys"] == {}


async def test_reload_keeps_the_standby_for_argv_changes_and_replaces_it_for_env_changes(
    tmp_path: Path,
) -> None:
    async with host(tmp_path) as h:
        sup, sb = await h.serving(h.cfg())
        # A setting: argv only. The engine restarts, in the standby's process.
        result = await sup.reload(h.cfg(max_model_len=1024))
        assert result.changed == ["a"]
        await h.ready()
        assert sup.engine("a").status().pid == sb.pid
        sb2 = await h.standby_ready()
        # The environment: the standby imported under the old one, so it goes.
        await sup.reload(h.cfg(max_model_len=1024, env={"X": "1"}))
        await h.ready()
        engine = sup.engine("a")
        assert engine.status().pid is not None and engine.status().pid != sb2.pid and not sb2.alive
        assert engine.status().last_start is not None and engine.status().last_start.via == "plain"
        assert (await h.standby_ready()).env["X"] == "1"


async def test_reload_that_turns_standbys_off_keeps_the_engine_running(tmp_path: Path) -> None:
    async with host(tmp_path) as h:
        sup, sb = await h.serving(h.cfg())
        engine = sup.engine("a")
        assert engine.status().pid is not None
        pid = engine.status().pid
        result = await sup.reload(h.cfg(standby=False))
        assert result.unchanged == ["a"]
        await wait_for(lambda: not sb.alive, "the standby to go")
        assert engine.status().pid is not None and engine.status().pid == pid
        assert engine.standby.state is StandbyState.OFF
        await sup.reload(h.cfg())
        await h.standby_ready()


async def test_an_engine_fork_change_restarts_the_engine_and_keeps_the_standby(
    tmp_path: Path,
) -> None:
    async with host(tmp_path) as h:
        sup, sb = await h.serving(h.cfg())
        assert (await sup.reload(h.cfg(engine_fork=True))).changed == ["a"]
        await h.ready()
        assert sb.triggered_argv is not None and sb.fork is True
