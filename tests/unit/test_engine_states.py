"""The engine's transition table and its check."""

from __future__ import annotations

import pytest

from orchestrator.engine.states import (
    STANDBY_TRANSITIONS,
    TRANSITIONS,
    IllegalTransition,
    StandbyState,
    State,
    check,
    check_standby,
)


def test_every_state_has_a_row_and_every_state_can_be_left_and_reached() -> None:
    assert set(TRANSITIONS) == set(State)
    reached = set().union(*TRANSITIONS.values())
    assert reached == set(State)
    assert all(TRANSITIONS[s] for s in State)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (State.STOPPED, State.STARTING),
        (State.STARTING, State.READY),
        (State.READY, State.UNHEALTHY),
        (State.UNHEALTHY, State.READY),
        (State.READY, State.STOPPING),
        (State.STOPPING, State.BACKOFF),
        (State.BACKOFF, State.STARTING),
        (State.STOPPING, State.FAILED),
        (State.FAILED, State.STARTING),
        (State.READY, State.READY),
    ],
)
def test_allowed(old: State, new: State) -> None:
    check(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # a running tree is always taken down (stopping) before the engine says it is stopped
        (State.READY, State.STOPPED),
        (State.UNHEALTHY, State.BACKOFF),
        (State.READY, State.FAILED),
        (State.STOPPED, State.READY),
        (State.BACKOFF, State.READY),
        (State.STOPPING, State.READY),
    ],
)
def test_illegal(old: State, new: State) -> None:
    with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
        check(old, new)


def test_every_standby_state_has_a_row_and_can_be_left_and_reached() -> None:
    assert set(STANDBY_TRANSITIONS) == set(StandbyState)
    assert set().union(*STANDBY_TRANSITIONS.values()) == set(StandbyState)


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (StandbyState.OFF, StandbyState.PREPARING, True),
        (StandbyState.PREPARING, StandbyState.READY, True),
        (StandbyState.READY, StandbyState.OFF, True),  # handed over, discarded, or it died
        (StandbyState.PREPARING, StandbyState.UNAVAILABLE, True),  # refused
        (StandbyState.UNAVAILABLE, StandbyState.OFF, True),
        # a ready standby is one that imported: it is not declared impossible afterwards
        (StandbyState.READY, StandbyState.UNAVAILABLE, False),
        (StandbyState.OFF, StandbyState.READY, False),
        (StandbyState.UNAVAILABLE, StandbyState.PREPARING, False),
    ],
)
def test_standby_transitions(old: StandbyState, new: StandbyState, allowed: bool) -> None:
    if allowed:
        check_standby(old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"standby state transition {old} -> {new}"):
            check_standby(old, new)
