"""Taking a process tree down (engine stop and an earlier daemon's leftovers), on fake processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import pytest

from orchestrator.engine.process import ProcessId
from orchestrator.engine.terminate import terminate_tree
from tests.fake_processes import Behaviour, FakeProc, FakeProcesses


def tree(fake: FakeProcesses, behaviour: Behaviour) -> FakeProc:
    fake.behaviour = behaviour
    pid, read_fd = fake.spawn(["engine"], {})
    os.close(read_fd)
    return fake.procs[pid]


async def test_sigterm_to_the_group_is_enough() -> None:
    fake = FakeProcesses()
    main = tree(fake, Behaviour(children=2))
    t = await terminate_tree(fake, main.pid, fake.descendants(main.pid), 5.0, "m")
    assert t.killed == "" and t.survivors == [] and t.seconds < 1
    assert fake.group(main.pid) == []
    assert all(p.signals == [signal.SIGTERM] for p in fake.procs.values())
    fake.close()


async def test_what_ignores_sigterm_is_killed_after_the_grace() -> None:
    fake = FakeProcesses()
    main = tree(fake, Behaviour(ignore_term=True, children=1))
    started = time.monotonic()
    t = await terminate_tree(fake, main.pid, fake.descendants(main.pid), 0.2, "m")
    assert time.monotonic() - started >= 0.2
    assert t.killed == f"{main.pid} (fake), {main.pid + 1} (fake)"
    assert t.survivors == [] and fake.group(main.pid) == []
    assert main.signals == [signal.SIGTERM, signal.SIGKILL]


async def test_a_descendant_that_left_the_group_is_signalled_too() -> None:
    fake = FakeProcesses()
    main = tree(fake, Behaviour(children=0))
    escaped = FakeProc(main.pid + 100, main.pid + 100, main.pid, Behaviour())
    fake.procs[escaped.pid] = escaped
    tracked = fake.descendants(main.pid)
    assert [p.pid for p in tracked] == [escaped.pid]
    t = await terminate_tree(fake, main.pid, tracked, 1.0, "m")
    assert t.survivors == [] and not escaped.alive and escaped.signals == [signal.SIGTERM]


async def test_the_group_is_signalled_after_its_leader_exited() -> None:
    """A crash during start-up leaves no tracked tree, only an orphan in the group: it gets its
    SIGTERM at once instead of waiting out the grace for SIGKILL."""
    fake = FakeProcesses()
    main = tree(fake, Behaviour(children=1))
    fake.crash(main.pid)
    exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    exited.set_result(main.status or 0)
    t = await terminate_tree(fake, main.pid, fake.descendants(main.pid), 5.0, "m", exited)
    assert t.killed == "" and t.seconds < 1
    assert fake.procs[main.pid + 1].signals == [signal.SIGTERM]


async def test_survivors_of_sigkill_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeProcesses()
    main = tree(fake, Behaviour(ignore_term=True, survives_kill=True, children=0))
    with caplog.at_level(logging.ERROR):
        t = await terminate_tree(fake, main.pid, [], 0.05, "leftover of m", kill_wait=0.05)
    assert t.survivors == [main.pid]
    assert f"leftover of m: processes survive SIGKILL: {main.pid} (fake)" in caplog.text
    fake.close()


async def test_a_pid_that_is_not_ours_any_more_is_left_alone() -> None:
    fake = FakeProcesses()
    main = tree(fake, Behaviour(children=0))
    stale = ProcessId(main.pid + 1, 0.0)  # a recycled pid: other start time
    fake.procs[stale.pid] = FakeProc(stale.pid, stale.pid, None, Behaviour())
    await terminate_tree(fake, main.pid, [stale], 1.0, "m")
    assert fake.procs[stale.pid].alive and fake.procs[stale.pid].signals == []
    fake.close()
