"""How an engine's last start went: what asked for it, how it was launched, when it served.

These are the times a restart is judged by (crash -> serving again, standby on or off), so the
engine log, the daemon log and status all show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.engine.start_method import StartMethod

Cause = Literal["start", "restart", "retry"]  # a command, or the restart after a failure
_AFTER = {"start": "the start command", "restart": "the restart command", "retry": "the failure"}


@dataclass
class StartRecord:
    via: Literal["standby", "plain"]
    cause: Cause
    asked_at: float  # wall clock: the command, or the failure a retry follows
    launched_at: float  # wall clock: the spawn, or the standby's trigger
    fork: bool
    ready_at: float | None = None
    fork_reason: str = ""
    # Wall clock of the steps between a failure and the launch (None where they did not happen):
    # the dead engine's tree gone, the next life begun after the backoff, the memory released.
    cleaned_at: float | None = None
    life_at: float | None = None
    released_at: float | None = None
    observed: StartMethod | None = None  # how vLLM really started its EngineCore

    def phases(self) -> dict[str, float | None]:
        """Seconds of each step from the ask (a failure, a command) to ready; they add up."""
        marks = [self.asked_at, self.cleaned_at, self.life_at, self.released_at, self.launched_at]
        names = ("cleanup", "backoff", "memory_release", "launch")
        out: dict[str, float | None] = {}
        last = self.asked_at
        for name, mark in zip(names, marks[1:], strict=True):
            out[name] = None if mark is None else max(0.0, mark - last)
            last = mark if mark is not None else last
        out["startup"] = self.launch_to_ready_s
        return out

    @property
    def launch_to_ready_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.launched_at

    @property
    def ask_to_ready_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.asked_at

    def ready(self, now: float) -> str:
        """Mark it serving at `now`; the line that says how long it took."""
        self.ready_at = now
        launch = "the standby's trigger" if self.via == "standby" else "a plain launch"
        split = ", ".join(f"{k} {v:.2f}" for k, v in self.phases().items() if v is not None)
        return (
            f"ready {now - self.launched_at:.2f} s after {launch}"
            f"{' (EngineCore by fork)' if self.fork else ''}, "
            f"{now - self.asked_at:.2f} s after {_AFTER[self.cause]} ({split} s)"
        )
