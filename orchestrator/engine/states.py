"""An engine's states, what it is asked to be, and which state changes are allowed; the same for
the engine's standby, which is not an engine state but a small machine of its own.

Each machine's state and reason live in one `Machine`, changed together through `move`, which
checks the table. The single way around the table is `Machine.force`, for when the lifecycle code
itself failed and the state it left cannot be trusted (the engine is then forced to FAILED).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from typing import Final, Generic, TypeVar


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


# Whether a state comes with a reason (True) or never does (False); the others may have one.
REASONS: Final[Mapping[State, bool]] = {
    S.READY: False,
    S.UNHEALTHY: True,  # the health problem
    S.BACKOFF: True,  # the failure it waits to retry after
    S.FAILED: True,  # why it gave up
}


class StandbyState(enum.StrEnum):
    OFF = "off"  # none: not wanted, not yet prepared, used, or gone
    PREPARING = "preparing"  # started, importing the engine's modules
    READY = "ready"  # imports done, waiting for the trigger
    UNAVAILABLE = "unavailable"  # cannot work with this command and environment (the reason says)


B = StandbyState
STANDBY_TRANSITIONS: Final[Mapping[StandbyState, frozenset[StandbyState]]] = {
    # started; or the command cannot be imported ahead
    B.OFF: frozenset({B.PREPARING, B.UNAVAILABLE}),
    # imports done; refused (CUDA initialised, nothing imported); or taken, discarded, or it died
    B.PREPARING: frozenset({B.READY, B.UNAVAILABLE, B.OFF}),
    B.READY: frozenset({B.OFF}),
    # the command or environment changed, or standbys were turned off: try again from scratch
    B.UNAVAILABLE: frozenset({B.OFF}),
}


STANDBY_REASONS: Final[Mapping[StandbyState, bool]] = {
    B.PREPARING: False,
    B.READY: False,
    B.UNAVAILABLE: True,  # why it cannot work
}


class IllegalTransition(RuntimeError):
    """A state change the table does not allow: a bug in the lifecycle code."""


E = TypeVar("E", State, StandbyState)


def _check(table: Mapping[E, frozenset[E]], what: str, old: E, new: E) -> None:
    if new is not old and new not in table[old]:
        raise IllegalTransition(f"illegal {what} state transition {old.value} -> {new.value}")


def _check_reason(reasons: Mapping[E, bool], what: str, state: E, reason: str | None) -> None:
    wanted = reasons.get(state)
    if wanted is not None and wanted != (reason is not None):
        has = f"reason {reason!r}" if reason is not None else "no reason"
        raise IllegalTransition(f"illegal {what} state {state.value} with {has}")


def check(old: State, new: State) -> None:
    """Raise IllegalTransition unless old -> new is in the table (staying put always is)."""
    _check(TRANSITIONS, "engine", old, new)


def check_standby(old: StandbyState, new: StandbyState) -> None:
    """check() for a standby's states."""
    _check(STANDBY_TRANSITIONS, "standby", old, new)


def check_status(old: State, new: State, reason: str | None) -> None:
    """check() for a change to (new, reason), the pair included."""
    _check(TRANSITIONS, "engine", old, new)
    _check_reason(REASONS, "engine", new, reason)


class Machine(Generic[E]):
    """A state and the reason for it, written only through move() (or force()). `changed` runs
    after every change, so what is saved and shown never has one without the other."""

    def __init__(
        self,
        label: str,
        kind: str,
        initial: E,
        tables: tuple[Mapping[E, frozenset[E]], Mapping[E, bool]],
        log: logging.Logger,
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self._kind = kind  # "engine" or "standby", for the BUG line
        self._state: E = initial
        self._reason: str | None = None
        self._table: Mapping[E, frozenset[E]] = tables[0]
        self._reasons: Mapping[E, bool] = tables[1]
        self._log = log
        self._changed = changed

    @property
    def state(self) -> E:
        return self._state

    @property
    def reason(self) -> str | None:
        return self._reason

    def move(self, state: E, reason: str | None) -> None:
        """Change state and reason together. A change the table forbids is logged as a BUG, with
        the stack, and not raised: a bookkeeping bug must not stop the real work under way
        (taking a tree down, a restart). Tests fail on that line."""
        old = self._state
        if state is old and reason == self._reason:
            return
        try:
            _check(self._table, self._kind, old, state)
            _check_reason(self._reasons, self._kind, state, reason)
        except IllegalTransition as e:
            self._log.error("%s: BUG: %s", self.label, e, stack_info=True)
        if state is not old:
            self._log.info("%s: %s -> %s", self.label, old.value, state.value)
        self._state, self._reason = state, reason
        if self._changed is not None:
            self._changed()

    def force(self, state: E, reason: str) -> None:
        """The one way around the table, for when the lifecycle code itself failed: the state it
        left cannot be trusted, whatever it is."""
        old = self._state.value
        self._log.warning("%s: %s -> %s forced: %s", self.label, old, state.value, reason)
        self._state, self._reason = state, reason
        if self._changed is not None:
            self._changed()
