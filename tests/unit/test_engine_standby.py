"""An Engine's standby in-process: started once the engine is ready, used by the next start,
replaced, discarded when the command or environment changes, taken down with the model.

Processes are fakes (tests/fake_processes.py) that speak the launcher's side of the channel; the
daemon's side (orchestrator/engine/standby/channel.py, slot.py) is the real one."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from orchestrator.engine.states import Desired, StandbyState, State
from tests.engine_host import EngineHost, engine_host, wait_for
from tests.fake_processes import Behaviour, FakeProc
from tests.health_server import UNAVAILABLE

READY, STOPPED, FAILED = State.READY, State.STOPPED, State.FAILED
SB_READY, SB_OFF, SB_UNAVAILABLE = StandbyState.READY, StandbyState.OFF, StandbyState.UNAVAILABLE
COMMAND = ["python3", "-m", "fakevllm"]  # a module: the launcher can import it ahead
ON: dict[str, Any] = {"engine_command": COMMAND, "standby": True}


async def standby_ready(h: EngineHost) -> FakeProc:
    await wait_for(lambda: h.engine.standby.state is SB_READY, "the standby to be ready")
    (sb,) = h.fake.standbys_alive()
    return sb


async def serving(h: EngineHost) -> FakeProc:
    """Start the engine; return its standby once ready."""
    await h.engine.start()
    await h.reach(READY)
    return await standby_ready(h)


def notes(h: EngineHost) -> str:
    return "\n".join(h.engine.log.tail(200))


async def test_a_standby_is_prepared_once_ready_and_becomes_the_next_engine(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        first = h.pid()
        # The model's exact environment, the launcher under the command's own interpreter.
        assert sb.env == h.engine.spec.launch.env
        assert sb.argv[0] == "python3" and sb.argv[-3:] == COMMAND
        assert "--label" in sb.argv and h.tracked[sb.pid] is h.engine
        status = h.engine.standby.status()
        assert (status.pid, status.rss_bytes, status.reason) == (sb.pid, 600 << 20, None)

        await h.engine.restart()
        await h.reach(READY)
        # The engine now runs in the standby's process, with the engine's argv.
        assert h.pid() == sb.pid and sb.triggered_argv == h.engine.spec.launch.argv
        assert sb.fork is False
        assert not h.fake.procs[first].alive
        assert h.fake.group(sb.pid) == [sb.pid, sb.pid + 1]  # and its EngineCore
        start = h.engine.status().last_start
        assert start is not None and (start.via, start.cause) == ("standby", "restart")
        assert f"starting from standby pid {sb.pid} (imports done)" in notes(h)
        assert "s after the standby's trigger" in notes(h)
        # ... and a fresh standby is prepared for the restart after that.
        second = await standby_ready(h)
        assert second.pid != sb.pid
        assert [p.pid for p in h.fake.engines_alive()] == [sb.pid]


async def test_a_crash_restarts_from_the_standby(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        first = h.pid()
        h.fake.crash(first, code=1)
        await wait_for(
            lambda: h.engine.status().restarts == 1 and h.engine.state is READY, "restart"
        )
        assert h.pid() == sb.pid
        start = h.engine.status().last_start
        assert start is not None and (start.via, start.cause) == ("standby", "retry")
        assert "s after the failure" in notes(h)
        # The crashed engine's orphan is gone; the standby was not part of its tree.
        assert not h.fake.procs[first + 1].alive and h.fake.most_alive == 1


async def test_a_retry_counts_from_the_crash_not_from_the_end_of_the_cleanup(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path, **ON) as h:
        h.fake.behaviour = Behaviour(term_delay=0.5)  # the orphaned EngineCore takes its time
        await serving(h)
        crashed = time.time()
        h.fake.crash(h.pid(), code=1)
        await wait_for(
            lambda: h.engine.status().restarts == 1 and h.engine.state is READY, "restart"
        )
        start = h.engine.status().last_start
        assert start is not None and start.cause == "retry"
        # Between the two: the orphan's SIGTERM, stop_grace_s (0.2 s here), SIGKILL.
        assert crashed <= start.asked_at <= start.launched_at - 0.2


async def test_a_trigger_during_the_imports_runs_once_they_are_done(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        h.fake.behaviour = Behaviour(standby_import_s=0.3)
        await h.engine.start()
        await h.reach(READY)
        await wait_for(lambda: h.fake.standbys_alive(), "a standby")
        (sb,) = h.fake.standbys_alive()
        assert h.engine.standby.state is StandbyState.PREPARING
        await h.engine.restart()
        await wait_for(lambda: h.engine.status().pid is not None, "the new engine")
        assert h.pid() == sb.pid and not sb.imported  # handed over while it still imports
        assert "(still importing)" in notes(h)
        await h.reach(READY)
        assert sb.triggered_argv == h.engine.spec.launch.argv


async def test_an_argv_change_keeps_the_standby_and_fork_travels_in_the_trigger(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        spec = h.spec(max_model_len=1024, engine_fork=True)
        await h.engine.restart(spec)
        await h.reach(READY)
        assert h.pid() == sb.pid and sb.fork is True
        assert sb.triggered_argv is not None and "--max-model-len" in sb.triggered_argv
        # The start method is not in the standby's environment: the trigger sets it.
        assert "VLLM_WORKER_MULTIPROC_METHOD" not in sb.env
        assert "(EngineCore by fork)" in notes(h)


async def test_a_plain_start_with_fork_puts_the_start_method_in_the_environment(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path, **ON) as h:
        h.engine.set_spec(h.spec(engine_fork=True))
        await h.engine.start()
        await h.reach(READY)
        (engine,) = h.fake.engines_alive()
        assert engine.env["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"
        sb = await standby_ready(h)
        assert "VLLM_WORKER_MULTIPROC_METHOD" not in sb.env


async def test_an_environment_change_discards_the_standby_and_starts_plainly(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        await h.engine.restart(h.spec(env={"NEW_VAR": "1"}))
        await h.reach(READY)
        assert not sb.alive and sb.triggered_argv is None
        assert signal.SIGTERM in sb.signals or sb.status == 0  # its channel closed first
        assert (
            h.engine.status().last_start is not None and h.engine.status().last_start.via == "plain"
        )
        assert "standby discarded: the engine's command or environment changed" in notes(h)
        # The next standby has the new environment.
        second = await standby_ready(h)
        assert second.env["NEW_VAR"] == "1"


async def test_a_reload_that_changes_the_environment_drops_the_standby_at_once(
    tmp_path: Path,
) -> None:
    """set_spec (a reload that keeps the running engine) prepares the standby for the new spec."""
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        h.engine.set_spec(h.spec(env={"NEW_VAR": "2"}))
        await wait_for(lambda: not sb.alive, "the old standby to go")
        second = await standby_ready(h)
        assert second.env["NEW_VAR"] == "2"


async def test_stop_takes_the_standby_down_with_the_engine(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        await h.engine.stop()
        assert h.engine.state is STOPPED
        assert not sb.alive and h.fake.group(sb.pid) == []
        assert h.engine.standby.state is SB_OFF and h.engine.standby.record() is None
        assert h.tracked == {} and all(not p.alive for p in h.fake.spawned)
        assert "standby discarded: the model was stopped" in notes(h)
        # A start after a stop launches plainly, then prepares a standby again.
        await h.engine.start()
        await h.reach(READY)
        assert (
            h.engine.status().last_start is not None and h.engine.status().last_start.via == "plain"
        )
        await standby_ready(h)


async def test_a_daemon_shutdown_stop_takes_a_standby_that_is_still_importing(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path, **ON) as h:
        h.fake.behaviour = Behaviour(standby_import_s=60)
        await h.engine.start()
        await h.reach(READY)
        await wait_for(lambda: h.fake.standbys_alive(), "a standby")
        (sb,) = h.fake.standbys_alive()
        h.engine.retire()
        await h.engine.stop(desired=Desired.RUNNING)
        assert not sb.alive and h.fake.group(sb.pid) == [] and h.tracked == {}


async def test_a_standby_that_ignores_its_channel_and_sigterm_is_killed(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        h.fake.behaviour = Behaviour(ignore_term=True, standby_import_s=60)
        await h.engine.start()
        await h.reach(READY)
        await wait_for(lambda: h.fake.standbys_alive(), "a standby")
        (sb,) = h.fake.standbys_alive()
        sb.channel = None  # it never sees EOF
        await h.engine.stop()
        assert sb.signals == [signal.SIGTERM, signal.SIGKILL] and not sb.alive


async def test_a_standby_that_dies_while_waiting_leaves_a_plain_start(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        h.fake.crash(sb.pid, sig=signal.SIGKILL)
        await wait_for(lambda: h.engine.standby.state is SB_OFF, "the standby to be gone")
        assert h.engine.standby.status().reason == (
            "the standby exited (signal 9) while waiting; the next start is plain"
        )
        assert h.engine.state is READY  # the engine itself is not concerned
        await h.engine.restart()
        await h.reach(READY)
        assert (
            h.engine.status().last_start is not None and h.engine.status().last_start.via == "plain"
        )


async def test_a_refusing_standby_is_not_tried_again_until_the_environment_changes(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path, **ON) as h:
        h.fake.behaviour = Behaviour(standby_refuses=True)
        await h.engine.start()
        await h.reach(READY)
        await wait_for(lambda: h.engine.standby.state is SB_UNAVAILABLE, "the refusal")
        reason = h.engine.standby.status().reason or ""
        assert reason == "standby refused: importing the engine initialised CUDA"
        await h.engine.restart()
        await h.reach(READY)
        spawned = len(h.fake.spawned)
        assert spawned == 3  # engine, the standby that refused, engine: no second standby
        assert notes(h).count("standby refused") == 1
        h.fake.behaviour = Behaviour()
        h.engine.set_spec(h.spec(env={"FIXED": "1"}))
        await standby_ready(h)


async def test_a_command_that_cannot_be_imported_ahead_says_why_once(tmp_path: Path) -> None:
    async with engine_host(tmp_path, standby=True) as h:  # fake-vllm: no such program
        await h.engine.start()
        await h.reach(READY)
        for _ in range(2):
            await h.engine.restart()
            await h.reach(READY)
        assert h.engine.standby.state is SB_UNAVAILABLE
        reason = h.engine.standby.status().reason or ""
        assert reason == "the engine command cannot be imported ahead: 'fake-vllm' is not found"
        assert notes(h).count("cannot be imported ahead") == 1
        assert h.fake.standbys_alive() == [] and len(h.fake.spawned) == 3


async def test_a_standby_that_could_not_import_the_module_is_not_kept(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        h.fake.behaviour = Behaviour(standby_mode="exec")
        await h.engine.start()
        await h.reach(READY)
        await wait_for(lambda: h.engine.standby.state is SB_UNAVAILABLE, "the verdict")
        assert h.fake.standbys_alive() == []


async def test_turning_standbys_off_drops_it_and_on_prepares_one(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        off = h.engine.spec
        h.cfg = h.cfg.model_copy(
            update={"orchestrator": h.cfg.orchestrator.model_copy(update={"standby": False})}
        )
        h.engine.set_spec(h.spec())
        await wait_for(lambda: not sb.alive, "the standby to go")
        assert h.engine.standby.status().reason == "standby discarded: turned off"
        h.engine.set_spec(off)
        await standby_ready(h)


async def test_a_failed_engine_keeps_no_standby(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        # Every later life dies before it is ready: the first through the standby, then plain.
        h.fake.behaviour = Behaviour(exits_after=0.01)
        sb.behaviour = h.fake.behaviour
        h.health.answer = UNAVAILABLE
        h.fake.crash(h.pid())
        await h.reach(FAILED)
        assert h.fake.standbys_alive() == [] and h.engine.standby.record() is None
        assert len([p for p in h.fake.spawned if p.started_as_standby]) == 1


async def test_status_and_state_record_show_the_standby(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        sb = await serving(h)
        record = h.engine.standby.record()
        assert record is not None and record.pid == sb.pid
        assert record.create_time == sb.create_time
        status = h.engine.standby.status()
        assert status.state is SB_READY and status.prepare_s == 0.0


async def test_restart_storm_never_runs_two_engines_or_leaks_a_standby(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        await h.engine.start()
        await h.reach(READY)
        for i in range(6):
            if i % 2:
                await standby_ready(h)
            await asyncio.gather(h.engine.restart(), h.engine.restart())
        await h.reach(READY)
        assert h.fake.most_alive == 1
        await h.engine.stop()
        assert [p.pid for p in h.fake.spawned if p.alive] == []
