"""How an engine's last start went: what asked for it, how it was launched, when it served.

These are the times a restart is judged by (crash -> serving again, standby on or off), so the
engine log, the daemon log and status all show them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from orchestrator.engine import start_method
from orchestrator.engine.launch import Launch
from orchestrator.engine.logfile import EngineLog
from orchestrator.engine.start_method import StartMethod

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
    fork_reason: str = ""
    # Wall clock of the steps between a failure and the launch (None where they did not happen):
    # the dead engine's tree gone, the next life begun after the backoff, the memory released.
    cleaned_at: float | None = None
    life_at: float | None = None
    released_at: float | None = None
    observed: StartMethod | None = None  # how vLLM really started its EngineCore

    @classmethod
    def launched(
        cls,
        via: Literal["standby", "plain"],
        asked: tuple[Cause, float],
        launched_at: float,
        launch: Launch,
        marks: Mapping[str, float],
    ) -> StartRecord:
        """A start launched now; `marks` are the steps' times, those before the ask ignored."""
        cause, asked_at = asked
        kept = {k: at for k, at in marks.items() if at >= asked_at}
        return cls(
            via,
            cause,
            asked_at,
            launched_at,
            launch.fork,
            fork_reason=launch.fork_reason,
            cleaned_at=kept.get("cleaned_at"),
            life_at=kept.get("life_at"),
            released_at=kept.get("released_at"),
        )

    def observe(self, pid: int, log: EngineLog, mark: int) -> tuple[StartRecord, str]:
        """This start with how vLLM really started its EngineCore, and the line that says so."""
        seen = start_method.observe(pid, log.lines_since(mark))
        asked = StartMethod("fork" if self.fork else "spawn", self.fork_reason)
        return dataclasses.replace(self, observed=seen), start_method.describe(asked, seen)

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

    def ready(self, now: float) -> StartRecord:
        """This start, serving since `now`."""
        return dataclasses.replace(self, ready_at=now)

    def took(self) -> str:
        """The line that says how long the start took (once ready)."""
        now = self.ready_at if self.ready_at is not None else self.launched_at
        launch = "the standby's trigger" if self.via == "standby" else "a plain launch"
        split = ", ".join(f"{k} {v:.2f}" for k, v in self.phases().items() if v is not None)
        return (
            f"ready {now - self.launched_at:.2f} s after {launch}"
            f"{' (EngineCore by fork)' if self.fork else ''}, "
            f"{now - self.asked_at:.2f} s after {_AFTER[self.cause]} ({split} s)"
        )
