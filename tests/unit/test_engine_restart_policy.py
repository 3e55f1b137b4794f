"""Restart policy: doubling backoff up to a cap, a failure budget per window, reset when stable."""

from __future__ import annotations

from orchestrator.config import OrchestratorSettings
from orchestrator.engine.restart_policy import RestartPolicy

S = OrchestratorSettings(
    backoff_initial_s=2,
    backoff_max_s=10,
    max_restarts=5,
    restart_window_s=100,
    stable_after_s=50,
)


def delays(
    policy: RestartPolicy, times: list[float], up_s: float | None = None
) -> list[float | None]:
    return [policy.failed(S, t, up_s) for t in times]


def test_backoff_doubles_up_to_the_cap() -> None:
    assert delays(RestartPolicy(), [0, 1, 2, 3, 4]) == [2, 4, 8, 10, 10]


def test_gives_up_after_max_restarts_failures_within_the_window() -> None:
    p = RestartPolicy()
    assert None not in delays(p, [0, 1, 2, 3, 4])
    assert p.failed(S, 5, None) is None
    assert p.failures == 6


def test_failures_older_than_the_window_no_longer_count() -> None:
    p = RestartPolicy()
    delays(p, [0, 1, 2, 3, 4])
    assert p.failed(S, 102, None) == 10  # 0 and 1 fell out of the window; backoff stays high
    assert p.failures == 4


def test_a_stable_life_starts_afresh_but_a_short_one_does_not() -> None:
    p = RestartPolicy()
    delays(p, [0, 1, 2, 3])
    assert p.failed(S, 4, up_s=49) == 10
    assert p.failures == 5
    assert p.failed(S, 60, up_s=50) == 2
    assert p.failures == 1


def test_reset_forgets_failures_and_backoff() -> None:
    p = RestartPolicy()
    delays(p, [0, 1, 2, 3, 4, 5])
    p.reset()
    assert p.failures == 0
    assert delays(p, [6, 7]) == [2, 4]


def test_settings_are_read_at_each_failure() -> None:
    p = RestartPolicy()
    assert p.failed(S, 0, None) == 2
    stricter = S.model_copy(update={"max_restarts": 2, "backoff_max_s": 3})
    assert p.failed(stricter, 1, None) == 3
    assert p.failed(stricter, 2, None) is None
