"""Random command sequences through one engine on fake processes: every (state, reason) the engine
shows on the way is one the transition table allows, and so is every step between two of them."""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.engine.lifecycle import EngineStatus
from orchestrator.engine.states import State, check_status
from tests.engine_host import EngineHost, engine_host
from tests.fake_processes import Behaviour
from tests.health_server import OK, UNAVAILABLE

# A command, and whether the sequence waits for it before the next (False: it runs alongside).
COMMANDS = ("start", "stop", "restart", "crash", "sick", "healthy", "slow_exit", "pause")
Step = tuple[str, bool]
steps = st.lists(st.tuples(st.sampled_from(COMMANDS), st.booleans()), min_size=1, max_size=14)


async def _run(root: Path, sequence: list[Step]) -> list[EngineStatus]:
    # startup_timeout_s is short so a sick engine's start fails within the example.
    async with engine_host(root, startup_timeout_s=0.3) as h:
        seen: list[EngineStatus] = [h.engine.status()]
        # The engine's `changed` runs after every move of its state (and at other saves).
        h.on_change.append(lambda: seen.append(h.engine.status()))
        pending: list[asyncio.Task[None]] = []
        for verb, wait in sequence:
            task = asyncio.create_task(_act(h, verb))
            if wait:
                await task
            else:
                pending.append(task)
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
        h.health.answer = OK
        await h.engine.stop()
        assert h.fake.most_alive <= 1 and h.fake.engines_alive() == []
    return seen


async def _act(h: EngineHost, verb: str) -> None:
    if verb in ("start", "stop", "restart"):
        await getattr(h.engine, verb)()
    elif verb == "crash" and (pid := h.engine.status().pid) is not None:
        h.fake.crash(pid)
    elif verb == "sick":
        h.health.answer = UNAVAILABLE
    elif verb == "healthy":
        h.health.answer = OK
    elif verb == "slow_exit":  # the next engines exit by themselves soon after they start
        h.fake.behaviour = Behaviour(exits_after=0.05, term_delay=0.01)
    elif verb == "pause":
        await asyncio.sleep(0.1)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=steps)
def test_every_status_taken_is_allowed_by_the_table(
    sequence: list[Step], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO), tempfile.TemporaryDirectory() as tmp:
        seen = asyncio.run(_run(Path(tmp), sequence))
    assert not [r.message for r in caplog.records if "BUG" in r.message]
    assert seen[0].state is State.STOPPED and seen[-1].state is State.STOPPED
    for before, after in itertools.pairwise(seen):
        check_status(before.state, after.state, after.reason)  # raises IllegalTransition
