"""One Engine in-process: its life, its failures and the races between commands and exits.

Processes are fakes (tests/fake_processes.py); the health probe is real, against a server on
the engine's port that the test sets to answer 200, 503 or nothing."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from orchestrator.engine.process import ProcessId
from orchestrator.engine.states import Desired, State
from orchestrator.gpu.inventory import Slice
from tests.engine_host import engine_host, wait_for
from tests.fake_processes import Behaviour
from tests.health_server import OK, UNAVAILABLE

READY, STARTING, STOPPED, FAILED = State.READY, State.STARTING, State.STOPPED, State.FAILED


async def test_start_reaches_ready_and_stop_takes_the_whole_tree_down(tmp_path: Path) -> None:
    async with engine_host(tmp_path) as h:
        await h.engine.start()
        await h.reach(READY)
        pid = h.pid()
        assert h.fake.group(pid) == [pid, pid + 1]  # the engine and its EngineCore
        assert h.engine.desired is Desired.RUNNING and h.engine.reason is None
        assert h.fake.procs[pid].argv[:2] == ["fake-vllm", "serve"]
        await h.engine.stop()
        assert h.engine.state is STOPPED and h.engine.desired is Desired.STOPPED
        assert h.engine.status().pid is None and h.fake.group(pid) == [] and h.tracked == {}
        assert any("stop requested: engine tree gone" in line for line in h.engine.log.tail(5))


async def test_start_twice_runs_one_engine(tmp_path: Path) -> None:
    async with engine_host(tmp_path) as h:
        await asyncio.gather(h.engine.start(), h.engine.start())
        await h.reach(READY)
        await h.engine.start()
        assert len(h.fake.spawned) == 1


async def test_a_crash_while_serving_restarts_it_and_keeps_the_engines_error(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path) as h:
        await h.engine.start()
        await h.reach(READY)
        first = h.pid()
        h.fake.output(first, b"INFO serving\nValueError: the KV cache is full\n")
        h.fake.crash(first, code=1)
        await wait_for(
            lambda: h.engine.status().restarts == 1 and h.engine.state is READY, "restart"
        )
        assert h.pid() != first
        ex = h.engine.status().last_exit
        assert ex is not None and ex.code == 1 and ex.reason == "ValueError: the KV cache is full"
        # The orphaned EngineCore was asked to go, then was gone before the relaunch.
        assert h.fake.procs[first + 1].signals == [signal.SIGTERM]
        assert not h.fake.procs[first + 1].alive and h.fake.most_alive == 1


async def test_a_start_up_failure_is_retried_then_gives_up_with_the_engines_error(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path, UNAVAILABLE) as h:
        h.fake.behaviour = Behaviour(exits_after=0.01, last_words=b"ValueError: max_model_len\n")
        await h.engine.start()
        await h.reach(FAILED)
        assert len(h.fake.spawned) == 4 and h.engine.status().restarts == 3
        reason = h.engine.reason or ""
        assert reason.startswith("4 failures within 60s; giving up. Last: engine exited with code")
        assert reason.endswith("during startup: ValueError: max_model_len")
        # An admin's start brings it back with a fresh budget.
        h.fake.behaviour = Behaviour()
        h.health.answer = OK
        await h.engine.start()
        await h.reach(READY)
        assert h.engine.reason is None


async def test_not_ready_within_the_startup_timeout_is_a_failure_and_retried(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path, UNAVAILABLE, startup_timeout_s=0.1) as h:
        await h.engine.start()
        await wait_for(lambda: len(h.fake.spawned) == 2, "a second try")
        assert not h.fake.spawned[0].alive
        assert "not ready within startup_timeout_s=0.1s" in "\n".join(h.engine.log.tail(20))


async def test_port_in_use_fails_at_once_without_spawning(tmp_path: Path) -> None:
    async with engine_host(tmp_path) as h:
        h.fake.busy_ports[h.health.port] = "pid 4242 (squatter)"
        await h.engine.start()
        await h.reach(FAILED)
        assert h.engine.reason == f"port {h.health.port} is already in use by pid 4242 (squatter)"
        assert h.fake.spawned == [] and h.engine.status().restarts == 0


async def test_an_engine_command_that_cannot_run_fails_at_once(tmp_path: Path) -> None:
    async with engine_host(tmp_path) as h:
        h.fake.spawn_error = FileNotFoundError(2, "No such file or directory")
        await h.engine.start()
        await h.reach(FAILED)
        assert (h.engine.reason or "").startswith("cannot run engine command 'fake-vllm'")


async def test_unhealthy_recovers_or_is_restarted_after_the_threshold(tmp_path: Path) -> None:
    async with engine_host(tmp_path, unhealthy_threshold=3) as h:
        await h.engine.start()
        await h.reach(READY)
        first = h.pid()
        h.health.answer = UNAVAILABLE
        await h.reach(State.UNHEALTHY)
        assert (h.engine.reason or "").startswith("/health returned 503 (")
        h.health.answer = OK
        await h.reach(READY)
        assert h.engine.reason is None and h.pid() == first
        h.health.answer = UNAVAILABLE
        await wait_for(lambda: len(h.fake.spawned) == 2, "the restart")
        h.health.answer = OK
        await h.reach(READY)
        ex = h.engine.status().last_exit
        assert ex is not None and ex.reason == "unhealthy: /health returned 503"
        assert not h.fake.procs[first].alive and h.engine.status().restarts == 1


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5, 10, 20])
async def test_stop_racing_a_crash_stops_and_never_restarts(tmp_path: Path, turns: int) -> None:
    """The crash lands `turns` event-loop turns before stop(): while the exit is on its way,
    while the runner sees it, while it cleans up; it must end stopped, with nothing relaunched."""
    async with engine_host(tmp_path) as h:
        await h.engine.start()
        await h.reach(READY)
        h.fake.crash(h.pid(), sig=signal.SIGKILL)
        for _ in range(turns):
            await asyncio.sleep(0)
        await h.engine.stop()
        assert h.engine.state is STOPPED and h.engine.desired is Desired.STOPPED
        await asyncio.sleep(5 * h.settings.backoff_max_s)
        assert h.engine.state is STOPPED and h.fake.engines_alive() == []
        assert h.fake.most_alive == 1


async def test_stop_landing_as_the_exit_arrives_during_a_restart(tmp_path: Path) -> None:
    """The runner is taking an unhealthy engine down for a restart and waits for its exit; a
    stop() cancels it in the very turn the exit arrives. (Python 3.11's asyncio.wait_for drops
    such a cancel: the runner then restarted the engine and stop() never returned.)"""
    async with engine_host(tmp_path, unhealthy_threshold=1) as h:
        h.fake.behaviour = Behaviour(term_delay=0.05)
        await h.engine.start()
        await h.reach(READY)
        stops: list[asyncio.Task[None]] = []
        reaper = h.fake.on_exit
        assert reaper is not None

        def exit_then_stop(pid: int, status: int) -> None:
            reaper(pid, status)
            if not stops:
                stops.append(asyncio.ensure_future(h.engine.stop()))

        h.fake.on_exit = exit_then_stop
        h.health.answer = UNAVAILABLE
        await wait_for(lambda: stops, "the engine's exit")
        async with asyncio.timeout(2):
            await stops[0]
        await asyncio.sleep(5 * h.settings.backoff_max_s)
        assert h.engine.state is STOPPED and len(h.fake.spawned) == 1


async def test_a_start_during_a_slow_stop_waits_for_it(tmp_path: Path) -> None:
    async with engine_host(tmp_path) as h:
        h.fake.behaviour = Behaviour(ignore_term=True)  # the stop waits out its grace
        await h.engine.start()
        await h.reach(READY)
        first = h.pid()
        stopping = asyncio.create_task(h.engine.stop())
        await h.reach(State.STOPPING)
        starting = asyncio.create_task(h.engine.start())
        await asyncio.sleep(h.settings.stop_grace_s / 2)
        assert len(h.fake.spawned) == 1  # not while the old tree is still there
        await asyncio.gather(stopping, starting)
        await h.reach(READY)
        assert h.pid() != first and h.fake.most_alive == 1
        assert h.fake.procs[first].signals == [signal.SIGTERM, signal.SIGKILL]


async def test_a_storm_of_commands_never_runs_two_engines(tmp_path: Path) -> None:
    rng = random.Random(9)
    async with engine_host(tmp_path) as h:
        h.fake.behaviour = Behaviour(term_delay=0.01)

        async def storm(i: int) -> None:
            for _ in range(6):
                await asyncio.sleep(rng.random() * 0.02)
                if rng.random() < 0.15 and h.engine.status().pid is not None:
                    h.fake.crash(h.engine.status().pid)
                verb = rng.choice(("start", "stop", "restart"))
                await getattr(h.engine, verb)()

        await asyncio.gather(*(storm(i) for i in range(8)))
        await h.engine.start()
        await h.reach(READY)
        assert h.fake.most_alive == 1 and len(h.fake.engines_alive()) == 1


async def test_stop_during_backoff_cancels_the_relaunch(tmp_path: Path) -> None:
    async with engine_host(tmp_path, backoff_initial_s=30.0, backoff_max_s=30.0) as h:
        await h.engine.start()
        await h.reach(READY)
        h.fake.crash(h.pid())
        await h.reach(State.BACKOFF)
        await h.engine.stop()
        assert h.engine.state is STOPPED and len(h.fake.spawned) == 1


async def test_stop_before_a_process_exists(tmp_path: Path) -> None:
    """Waiting for the shared GPU's other engine to start, no process yet: straight to stopped."""
    async with engine_host(tmp_path) as h:
        slc = Slice("GPU-0", 0, "GPU-0", "A100", None, 40 << 30)
        h.engine.set_spec(h.spec(slc, shared=True))
        async with h.slice_locks.setdefault("GPU-0", asyncio.Lock()):
            await h.engine.start()
            await asyncio.sleep(0.05)
            assert h.engine.state is STARTING and h.fake.spawned == []
            await h.engine.stop()
        assert h.engine.state is STOPPED and h.fake.spawned == []


async def test_a_relaunch_waits_until_the_slice_memory_is_released(tmp_path: Path) -> None:
    async with engine_host(tmp_path) as h:
        h.engine.set_spec(h.spec(Slice("MIG-1", 0, "GPU-0", "A100", "3g.40gb", 40 << 30)))
        h.memory = (0, 40 << 30)  # the baseline, before the first start
        await h.engine.start()
        await h.reach(READY)
        h.memory = (30 << 30, 40 << 30)  # the dead engine's memory, still held
        h.fake.crash(h.pid())
        await wait_for(lambda: "waiting for slice memory" in "".join(h.engine.log.tail(3)), "wait")
        assert len(h.fake.spawned) == 1 and h.engine.state is STARTING
        h.memory = (0, 40 << 30)
        await h.reach(READY)
        assert len(h.fake.spawned) == 2


async def test_restart_takes_the_new_spec_and_a_fresh_budget(tmp_path: Path) -> None:
    async with engine_host(tmp_path, UNAVAILABLE) as h:
        h.fake.behaviour = Behaviour(exits_after=0.01)
        await h.engine.start()
        await h.reach(FAILED)
        h.fake.behaviour = Behaviour()
        h.health.answer = OK
        await h.engine.restart(h.spec(max_num_seqs=4))
        await h.reach(READY)
        assert "--max-num-seqs" in h.fake.spawned[-1].argv
        assert h.engine.desired is Desired.RUNNING and h.engine.spec.overrides == {
            "max_num_seqs": 4
        }


async def test_stop_keeps_what_was_asked_for_when_told_to(tmp_path: Path) -> None:
    async with engine_host(tmp_path) as h:
        await h.engine.start()
        await h.reach(READY)
        await h.engine.stop(desired=Desired.RUNNING)
        assert h.engine.state is STOPPED and h.engine.desired is Desired.RUNNING


async def test_want_records_the_request_and_asks_for_a_save(tmp_path: Path) -> None:
    async with engine_host(tmp_path) as h:
        saves = h.saves
        h.engine.want(Desired.RUNNING)
        assert h.engine.desired is Desired.RUNNING and h.saves == saves + 1
        h.engine.want(Desired.RUNNING)
        assert h.saves == saves + 1


async def test_cannot_start_marks_a_stopped_engine_failed(tmp_path: Path) -> None:
    async with engine_host(tmp_path) as h:
        h.engine.cannot_start("not placed: needs 3g.40gb")
        assert h.engine.state is FAILED and h.engine.reason == "not placed: needs 3g.40gb"


async def test_a_retired_engine_refuses_starts_even_those_already_waiting(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path) as h:
        h.fake.behaviour = Behaviour(ignore_term=True)
        await h.engine.start()
        await h.reach(READY)
        stopping = asyncio.create_task(h.engine.stop())
        await h.reach(State.STOPPING)
        queued = [asyncio.create_task(h.engine.start()), asyncio.create_task(h.engine.restart())]
        await asyncio.sleep(0)
        h.engine.retire()
        await asyncio.gather(stopping, *queued)
        await h.engine.stop(desired=Desired.RUNNING)
        assert h.engine.state is STOPPED and len(h.fake.spawned) == 1
        assert h.engine.desired is Desired.RUNNING


async def test_a_failure_of_the_supervision_itself_takes_the_tree_down_and_forces_failed(
    tmp_path: Path,
) -> None:
    async with engine_host(tmp_path) as h:
        real = h.fake.descendants
        calls: list[int] = []

        def broken_once(pid: int) -> list[ProcessId]:
            calls.append(pid)
            if len(calls) == 1:  # the first look, as the engine becomes ready
                raise RuntimeError("a bug")
            return real(pid)

        h.fake.descendants = broken_once  # type: ignore[method-assign]
        await h.engine.start()
        await h.reach(FAILED)
        assert h.engine.reason == "internal error in the daemon: RuntimeError('a bug')"
        assert h.fake.engines_alive() == [] and h.engine.status().pid is None
        await h.engine.start()
        await h.reach(READY)
