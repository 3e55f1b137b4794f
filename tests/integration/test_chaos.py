"""The bounded chaos test: kill -9 of the daemon at random moments during start/stop
storms, engines that outlive a closed stdout; afterwards exactly one tree per wanted model, no
orphan, nothing acknowledged lost, and state.json matching the API. CHAOS_SEED=N repeats a run's
choices (its timing is the machine's)."""

from __future__ import annotations

import os
import time

import pytest

from tests.chaos import ENGINE_ENV, run_chaos
from tests.daemon_harness import free_ports, marked_pids, standin_model

pytestmark = pytest.mark.slow
ROUNDS = 8


def test_daemon_kill_9_during_storms_loses_nothing_and_leaves_nothing(daemons) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or time.time_ns() % 1_000_000)
    print(f"chaos seed {seed} (CHAOS_SEED={seed} repeats it)")
    ports = free_ports(3)
    models = {
        name: standin_model(port, autostart=name != "c", env=ENGINE_ENV)
        for name, port in zip("abc", ports, strict=True)
    }
    d = daemons(models)
    run = run_chaos(d, seed, ROUNDS)
    print(run)
    assert run.problems == [], f"chaos seed {seed}: {run.problems}\n{d.log()[-3000:]}"
    assert run.rounds == ROUNDS and run.commands > 0
    assert d.terminate() == 0
    assert marked_pids(d.root) == []
