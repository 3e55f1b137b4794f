"""Stop what an earlier daemon on this state_dir left running, found through what a crash cannot
lose: the mark every engine process carries, and the engines state.json recorded."""

from __future__ import annotations

import asyncio
import logging

from orchestrator.engine import marker
from orchestrator.engine.marker import DaemonMark
from orchestrator.engine.process import ProcessId, ProcessOps
from orchestrator.engine.terminate import terminate_tree
from orchestrator.supervisor.store import EngineRecord

log = logging.getLogger(__name__)


async def stop_leftovers(
    ops: ProcessOps, mark: DaemonMark, records: dict[str, EngineRecord], grace: float
) -> None:
    """Stop every engine tree of an earlier daemon (not adopted: its output pipe and exit status
    went with that daemon). Call before spawning anything.

    Only processes of the daemon's own user are considered, found by the daemon's secret mark or
    by a record's pid and start time, and signalled through the group they are in now."""
    trees: dict[int, set[ProcessId]] = {}  # process group -> its processes we know are ours
    names: dict[int, str] = {}
    for t in ops.find_by_env(marker.ENV, mark.prefix):
        model = mark.model_of(t.value)
        if model is not None:
            trees.setdefault(t.pgid, set()).add(t.proc)
            names[t.pgid] = model
    for name, rec in records.items():
        leader = ProcessId(rec.pid, rec.create_time)
        pgid = ops.owned_group(leader)
        # Every engine and standby leads its own session: anything else is not one it started.
        if pgid is not None and pgid == rec.pid:
            trees.setdefault(pgid, set()).update([leader, *ops.descendants(rec.pid)])
            names.setdefault(pgid, name)
        elif ops.alive(leader):
            log.warning(
                "pid %d, recorded for %s by an earlier daemon, is not an engine of this daemon's "
                "(another user's process, or not leading its own process group): not stopped",
                rec.pid,
                name,
            )
        elif rec.pid not in trees:
            # A group id outlives its leader only while members live, but without a mark
            # nothing proves they are that engine's rather than a reused id's: say so only.
            left = await ops.wait_gone(rec.pid, [], 0.0)  # what of the group is there now
            if left:
                log.warning(
                    "process group %d of %s, recorded by an earlier daemon, still holds %s "
                    "without this daemon's mark: not stopped; stop them by hand if they are "
                    "that engine's",
                    rec.pid,
                    name,
                    ops.describe(left),
                )

    async def stop(pgid: int, procs: set[ProcessId]) -> None:
        name = names[pgid]
        pids = ops.describe(sorted(p.pid for p in procs))
        log.warning(
            "stopping engine of %s left by an earlier daemon: group %d: %s", name, pgid, pids
        )
        tracked = sorted(procs, key=lambda p: p.pid)
        await terminate_tree(ops, pgid, tracked, grace, f"leftover engine of {name}")

    await asyncio.gather(*(stop(pgid, procs) for pgid, procs in trees.items()))
