"""The Supervisor in-process, on fake processes reaped through a real SIGCHLD handler: start-up
(leftovers, placement, autostart), reload, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.daemon.state_lock import StateDirBusy
from orchestrator.engine import marker
from orchestrator.engine.states import Desired, State
from orchestrator.gpu.nvml import load_inventory
from orchestrator.supervisor.store import DaemonState, EngineRecord, StateStore
from orchestrator.supervisor.supervisor import Supervisor
from tests.daemon_harness import TOPOLOGIES
from tests.engine_host import config, wait_for
from tests.fake_processes import Behaviour
from tests.health_server import HealthServer
from tests.supervisor_host import SupervisorHost

READY, FAILED = State.READY, State.FAILED


class Host(SupervisorHost):
    """A supervisor whose models all answer /health on their own in-process server."""

    def __init__(self, root: Path, servers: dict[str, HealthServer]) -> None:
        super().__init__(root)
        self.servers = servers

    def cfg(self, profiles: dict[str, str]) -> Any:
        models = {n: {"port": self.servers[n].port, "profile": p} for n, p in profiles.items()}
        return config(self.root, models)

    async def open(self, profiles: dict[str, str]) -> Supervisor:
        return await self.open_supervisor(self.cfg(profiles), allow_partial=True)

    async def reach(self, name: str, state: State) -> None:
        assert self.sup is not None
        await wait_for(lambda: self.sup is not None and self.sup.engine(name).state is state, name)

    def running(self) -> list[str]:
        """The models whose fake engines are alive."""
        argvs = [p.argv for p in self.fake.engines_alive()]
        return sorted(a[a.index("--served-model-name") + 1] for a in argvs)


@contextlib.asynccontextmanager
async def host(root: Path, *names: str) -> AsyncIterator[Host]:
    async with contextlib.AsyncExitStack() as stack:
        servers = {n: await stack.enter_async_context(HealthServer().running()) for n in names}
        h = Host(root, servers)
        try:
            yield h
        finally:
            await h.close()


async def test_start_up_places_autostarts_and_marks_what_cannot_be_placed(tmp_path: Path) -> None:
    async with host(tmp_path, "a", "b", "c") as h:
        sup = await h.open({"a": "3g.40gb", "b": "3g.40gb", "c": "2g.20gb"})
        b = sup.engine("b")
        assert b.state is FAILED and (b.reason or "").startswith("not placed: needs 3g.40gb")
        assert b.desired is Desired.RUNNING  # autostart: it runs once a reload places it
        assert await sup.autostart() == ["a", "c"]
        await h.reach("a", READY)
        await h.reach("c", READY)
        await sup.start("b")
        assert len(h.fake.spawned) == 2 and sup.engine("b").state is FAILED


async def test_an_engine_exit_is_reaped_through_sigchld_and_restarted(tmp_path: Path) -> None:
    async with host(tmp_path, "a") as h:
        sup = await h.open({"a": "3g.40gb"})
        await sup.autostart()
        await h.reach("a", READY)
        first = h.fake.spawned[0]
        h.fake.crash(first.pid, sig=signal.SIGKILL)
        await wait_for(lambda: sup.engine("a").status().restarts == 1, "the restart")
        await h.reach("a", READY)
        assert not first.alive and len(h.fake.engines_alive()) == 1
        assert first.pid not in sup._pids


async def test_engines_left_by_an_earlier_daemon_are_stopped_and_a_reused_pid_is_not(
    tmp_path: Path,
) -> None:
    async with host(tmp_path, "a", "c") as h:
        cfg = h.cfg({"a": "3g.40gb", "c": "2g.20gb"})
        h.fake.behaviour = Behaviour(children=1)
        for _ in range(2):
            _, read_fd = h.fake.spawn(["vllm"], {})
            os.close(read_fd)
        old, reused = h.fake.spawned
        records = {
            "a": EngineRecord(old.pid, old.pgid, old.create_time, None),
            "c": EngineRecord(reused.pid, reused.pgid, reused.create_time - 100, None),
        }
        StateStore(cfg.orchestrator.state_dir).save(DaemonState(engines=records))
        sup = await h.open({"a": "3g.40gb", "c": "2g.20gb"})
        assert not old.alive and not h.fake.procs[old.pid + 1].alive
        assert old.signals == [signal.SIGTERM]
        assert reused.alive and reused.signals == []
        await sup.flush()
        assert h.saved()["engines"] == {}
        await sup.autostart()
        await h.reach("a", READY)


async def test_an_orphaned_engine_core_is_found_by_its_mark_without_any_saved_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11 item 1: the main process died while the daemon was down (and item 2: state.json
    never recorded it); a pid or group that is not ours is never touched."""
    async with host(tmp_path, "a") as h:
        cfg = h.cfg({"a": "3g.40gb"})
        h.fake.behaviour = Behaviour(children=1)
        spawned = []
        for d in (cfg.orchestrator.state_dir, tmp_path / "another-daemon"):
            d.mkdir(parents=True, exist_ok=True)
        for env in (
            marker.DaemonMark.load(cfg.orchestrator.state_dir).env("a"),  # ours
            marker.DaemonMark.load(tmp_path / "another-daemon").env("a"),  # another daemon's
            {},  # in a group whose id was recorded, but unmarked: maybe a reused id
        ):
            _, read_fd = h.fake.spawn(["vllm"], env)
            os.close(read_fd)
            spawned.append(h.fake.spawned[-1])
        ours, theirs, unmarked = spawned
        for main in (ours, unmarked):
            h.fake.crash(main.pid, sig=signal.SIGKILL)  # its EngineCore lives on
        record = EngineRecord(unmarked.pid, unmarked.pgid, unmarked.create_time, None)
        StateStore(cfg.orchestrator.state_dir).save(DaemonState(engines={"a": record}))
        await h.open({"a": "3g.40gb"})
        assert h.fake.group(ours.pgid) == []
        assert h.fake.procs[ours.pid + 1].signals == [signal.SIGTERM]
        assert h.fake.group(theirs.pgid) == [theirs.pid, theirs.pid + 1]
        assert h.fake.group(unmarked.pgid) == [unmarked.pid + 1]
        assert theirs.signals == [] and h.fake.procs[unmarked.pid + 1].signals == []
        assert f"process group {unmarked.pgid} of a" in caplog.text
        assert "without this daemon's mark: not stopped" in caplog.text


async def test_a_second_supervisor_on_one_state_dir_is_refused_and_touches_nothing(
    tmp_path: Path,
) -> None:
    async with host(tmp_path, "a") as h:
        sup = await h.open({"a": "3g.40gb"})
        await sup.autostart()
        await h.reach("a", READY)
        (engine,) = h.fake.engines_alive()
        inventory = load_inventory(TOPOLOGIES / "a100-mixed.toml")
        second = Supervisor(sup.cfg, inventory, StateStore(tmp_path / "state"), ops=h.fake)
        with pytest.raises(StateDirBusy, match=rf"another daemon \(pid {os.getpid()}\)"):
            await second.open()
        assert engine.alive and engine.signals == []
        await sup.shutdown()
        h.sup = second
        await second.open()  # the first one is gone: the state_dir is free


async def test_what_a_command_asked_is_on_disk_when_persist_returns(tmp_path: Path) -> None:
    """A command answered 202 must survive a daemon crash: desired state and restart overrides
    are saved before the answer, not when the engine gets to them."""
    async with host(tmp_path, "a", "c") as h:
        h.fake.behaviour = Behaviour(term_delay=0.3)  # the old engine takes its time to stop
        sup = await h.open({"a": "3g.40gb", "c": "2g.20gb"})
        await sup.autostart()
        await h.reach("a", READY)
        sup.engine("c").want(Desired.STOPPED)
        restart = asyncio.create_task(sup.restart("a", {"max_num_seqs": 7}))
        await asyncio.sleep(0)
        await sup.persist()
        saved = h.saved()
        assert saved["desired"] == {"a": "running", "c": "stopped"}
        assert saved["overrides"] == {"a": {"max_num_seqs": 7}}
        assert sup.engine("a").state is State.STOPPING  # not yet applied
        await restart
        await h.reach("a", READY)
        await sup.flush()
        assert h.saved()["overrides"] == {"a": {"max_num_seqs": 7}}
        assert "--max-num-seqs" in h.fake.engines_alive()[-1].argv


async def test_shutdown_stops_everything_keeps_what_was_asked_and_refuses_late_starts(
    tmp_path: Path,
) -> None:
    async with host(tmp_path, "a", "c") as h:
        sup = await h.open({"a": "3g.40gb", "c": "2g.20gb"})
        await sup.autostart()
        await h.reach("a", READY)
        await h.reach("c", READY)
        await sup.stop("c")
        h.fake.behaviour = Behaviour(ignore_term=True)
        await sup.restart("a")
        await h.reach("a", READY)
        shutting = asyncio.create_task(sup.shutdown())
        await h.reach("a", State.STOPPING)
        late = [asyncio.create_task(sup.start("a")), asyncio.create_task(sup.start("c"))]
        await asyncio.gather(shutting, *late)
        h.sup = None
        assert h.fake.engines_alive() == []
        assert len(h.fake.spawned) == 3  # a, c, then a again after the restart; nothing later
        state = json.loads(sup.store.path.read_text())
        assert state["desired"] == {"a": "running", "c": "stopped"} and state["engines"] == {}


async def test_reload_starts_a_model_it_places_and_keeps_the_intent_of_one_it_cannot(
    tmp_path: Path,
) -> None:
    async with host(tmp_path, "a", "b", "c") as h:
        sup = await h.open({"a": "3g.40gb", "b": "3g.40gb", "c": "2g.20gb"})
        await sup.autostart()
        await h.reach("c", READY)
        # a moves to a 1g slice, which frees the 3g.40gb for b; c now asks for a taken one.
        r = await sup.reload(h.cfg({"a": "1g.10gb", "b": "3g.40gb", "c": "3g.40gb"}))
        assert r.changed == ["a", "b", "c"]
        await h.reach("a", READY)
        await h.reach("b", READY)
        c = sup.engine("c")
        assert c.state is FAILED and (c.reason or "").startswith("not placed: needs 3g.40gb")
        assert c.desired is Desired.RUNNING
        assert sorted(
            p.argv[p.argv.index("--served-model-name") + 1] for p in h.fake.engines_alive()
        ) == ["a", "b"]
        await sup.reload(h.cfg({"a": "1g.10gb", "b": "3g.40gb", "c": "2g.20gb"}))
        await h.reach("c", READY)


async def test_reload_removes_a_model_even_with_a_start_on_its_way(tmp_path: Path) -> None:
    async with host(tmp_path, "a", "c") as h:
        sup = await h.open({"a": "3g.40gb", "c": "2g.20gb"})
        await sup.autostart()
        await h.reach("c", READY)
        h.fake.behaviour = Behaviour(ignore_term=True)
        await sup.restart("c")
        await h.reach("c", READY)
        removed = sup.engine("c")
        reload = asyncio.create_task(sup.reload(h.cfg({"a": "3g.40gb"})))
        await wait_for(lambda: removed.state is State.STOPPING, "c stopping")
        late = asyncio.create_task(removed.start())
        r = await reload
        await late
        assert r.removed == ["c"] and removed.state is State.STOPPED
        assert [
            p.argv[p.argv.index("--served-model-name") + 1] for p in h.fake.engines_alive()
        ] == ["a"]
