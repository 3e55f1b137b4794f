"""Take an engine's process tree down: SIGTERM, a grace period, SIGKILL, and proof it is gone."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass

from orchestrator.engine.process import ProcessId, ProcessOps

log = logging.getLogger(__name__)
KILL_WAIT_S = 10.0  # SIGKILL cannot be ignored: longer than this means something is stuck in D
# Grace for what a dead server left behind (vLLM's EngineCore has no parent-death signal, and was
# seen ignoring SIGTERM for the whole 30 s stop grace): nothing there has a request to finish.
ORPHAN_GRACE_S = 2.0


@dataclass(frozen=True)
class Termination:
    killed: str  # the processes still running after the grace, described; "" if none
    survivors: list[int]  # still running after SIGKILL (already logged as an error)
    seconds: float


async def terminate_tree(
    ops: ProcessOps,
    pgid: int,
    tracked: list[ProcessId],
    grace: float,
    what: str,
    exited: asyncio.Future[int] | None = None,
    kill_wait: float = KILL_WAIT_S,
) -> Termination:
    """SIGTERM the group and the tracked descendants that left it, SIGKILL what is left after
    `grace`, then check that nothing of the tree remains.

    `exited` is the main process's exit when it is our child: waiting on it costs nothing, so the
    tree is only polled once it has come.
    """
    started = time.monotonic()
    ops.signal_group(pgid, signal.SIGTERM)
    ops.signal_each(tracked, signal.SIGTERM)
    left = await _wait_gone(ops, pgid, tracked, grace, exited)
    if not left:
        return Termination("", [], time.monotonic() - started)
    killed = ops.describe(left)
    ops.signal_group(pgid, signal.SIGKILL)
    ops.signal_each(tracked, signal.SIGKILL)
    left = await _wait_gone(ops, pgid, tracked, kill_wait, exited)
    if left:
        log.error("%s: processes survive SIGKILL: %s", what, ops.describe(left))
    return Termination(killed, left, time.monotonic() - started)


async def _wait_gone(
    ops: ProcessOps,
    pgid: int,
    tracked: list[ProcessId],
    limit: float,
    exited: asyncio.Future[int] | None,
) -> list[int]:
    deadline = time.monotonic() + limit
    # asyncio.wait, not wait_for: 3.11's wait_for drops a cancel that lands as the future
    # completes, so a stop() racing a crash never ended the runner, which restarted on.
    if exited is not None and not exited.done():
        await asyncio.wait([exited], timeout=limit)
    return await ops.wait_gone(pgid, tracked, deadline)
