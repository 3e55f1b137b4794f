"""How an engine's last start went: what asked for it, how it was launched, when it served.

These are the times a restart is judged by (crash -> serving again, standby on or off), so the
engine log, the daemon log and status all show them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Cause = Literal["start", "restart", "retry"]  # a command, or the restart after a failure
_AFTER = {"start": "the start command", "restart": "the restart command", "retry": "the failure"}


@dataclass(frozen=True)
class StartRecord:
    via: Literal["standby", "plain"]
    cause: Cause
    asked_at: float  # wall clock: the command, or the failure a retry follows
    launched_at: float  # wall clock: the spawn, or the standby's trigger
    fork: bool
    ready_at: float | None = None

    @property
    def launch_to_ready_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.launched_at

    @property
    def ask_to_ready_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.asked_at

    def ready(self, now: float) -> StartRecord:
        """This start, serving since `now`."""
        return dataclasses.replace(self, ready_at=now)

    def took(self) -> str:
        """The line that says how long the start took (once ready)."""
        now = self.ready_at if self.ready_at is not None else self.launched_at
        launch = "the standby's trigger" if self.via == "standby" else "a plain launch"
        return (
            f"ready {now - self.launched_at:.2f} s after {launch}"
            f"{' (EngineCore by fork)' if self.fork else ''}, "
            f"{now - self.asked_at:.2f} s after {_AFTER[self.cause]}"
        )
