"""The leftover scan on real processes of two users: a student's process is never the daemon's,
even carrying the daemon's exact mark or named by a record, and a record's group id is never
the one signalled."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.engine import marker, process
from orchestrator.engine.marker import DaemonMark
from orchestrator.supervisor.leftovers import stop_leftovers
from orchestrator.supervisor.store import EngineRecord
from tests.daemon_harness import group_pids, wait_until
from tests.second_user import STUDENT, as_user, need_root

Run = Callable[[list[str], dict[str, str]], int]


@pytest.fixture
def groups() -> Iterator[Run]:
    started: list[subprocess.Popen[bytes]] = []

    def run(argv: list[str], env: dict[str, str]) -> int:
        p = subprocess.Popen(argv, env=env, start_new_session=True)
        started.append(p)
        wait_until(lambda: len(group_pids(p.pid)) == 2, 10, f"{argv} and its child")
        return p.pid

    yield run
    for p in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


TREE = ["sh", "-c", "sleep 300 & wait"]


def record(pid: int, pgid: int) -> EngineRecord:
    ident = process.ProcessId.of(pid)
    assert ident is not None
    return EngineRecord(pid, pgid, ident.create_time, None)


async def test_only_the_daemons_own_user_and_secret_mark_count(
    tmp_path: Path, groups: Run, caplog: pytest.LogCaptureFixture
) -> None:
    need_root()
    run = groups
    mark = DaemonMark.load(tmp_path)
    env = {**os.environ, **mark.env("alice")}
    ours = run(TREE, env)
    copied = run(as_user(STUDENT, TREE), env)
    forged = {**os.environ, marker.ENV: f"{tmp_path}:alice"}  # the old text
    old_text = run(TREE, forged)
    named = run(as_user(STUDENT, TREE), dict(os.environ))
    grouped = run(as_user(STUDENT, TREE), dict(os.environ))
    found = {t.pgid for t in process.find_by_env(marker.ENV, mark.prefix)}
    assert ours in found and copied not in found
    assert process.owned_group(process.ProcessId(named, record(named, 0).create_time)) is None
    mine = run(TREE, dict(os.environ))
    records = {"n": record(named, named), "g": record(mine, grouped)}
    with caplog.at_level(logging.WARNING):
        await stop_leftovers(process.OsProcesses(tmp_path), mark, records, grace=2.0)
    assert group_pids(ours) == [] and group_pids(mine) == []
    for theirs in (copied, old_text, named, grouped):
        assert len(group_pids(theirs)) == 2
    assert f"pid {named}, recorded for n by an earlier daemon, is not an engine" in caplog.text
