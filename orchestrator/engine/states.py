"""An engine's states, what it is asked to be, and which state changes are allowed.

Only `Engine` changes its state, through one setter that calls `check`. The single way around
the table is `Engine._force`, for when the lifecycle code itself failed and the state it left
cannot be trusted (the engine is then forced to FAILED, whatever it was).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"


class Desired(enum.StrEnum):
    """What an admin (or autostart) asked for; saved, so it outlives the daemon."""

    RUNNING = "running"
    STOPPED = "stopped"


S = State
TRANSITIONS: Final[Mapping[State, frozenset[State]]] = {
    # start; or it cannot be started at all (not placed)
    S.STOPPED: frozenset({S.STARTING, S.FAILED}),
    # up; a start attempt fails (its tree taken down first) or is stopped before a process exists
    S.STARTING: frozenset({S.READY, S.STOPPING, S.STOPPED, S.FAILED}),
    S.READY: frozenset({S.UNHEALTHY, S.STOPPING}),
    S.UNHEALTHY: frozenset({S.READY, S.STOPPING}),
    # the tree is gone: stopped, or a failed life waits to retry, or it gave up
    S.STOPPING: frozenset({S.STOPPED, S.BACKOFF, S.FAILED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
}


class IllegalTransition(RuntimeError):
    """A state change the table does not allow: a bug in the lifecycle code."""


def check(old: State, new: State) -> None:
    """Raise IllegalTransition unless old -> new is in the table (staying put always is)."""
    if new is not old and new not in TRANSITIONS[old]:
        raise IllegalTransition(f"illegal engine state transition {old.value} -> {new.value}")
