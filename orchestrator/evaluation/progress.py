"""Progress lines with rate and time left, written to stderr at most every few seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Say = Callable[[str], None]


def stderr_say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def quiet(_text: str) -> None:
    """For --quiet: progress goes nowhere."""


def human_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}min"
    return f"{s / 3600:.1f}h"


def estimate_s(calls: int, per_call_s: float, concurrency: int) -> float:
    """Seconds for `calls` calls of `per_call_s` each, `concurrency` at a time."""
    return calls * per_call_s / max(1, min(concurrency, calls))


@dataclass
class Progress:
    phase: str
    total: int
    say: Say
    interval_s: float = 2.0
    # After this many calls the measured rate is announced once as the estimate for the rest.
    estimate_after: int = 0
    done: int = 0
    asked: int = 0
    _start: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _estimated: bool = False

    def tick(self, asked: bool) -> None:
        """One item finished; `asked` when it cost a call (cached items go by at no cost)."""
        self.done += 1
        self.asked += asked
        now = time.monotonic()
        if self.estimate_after and not self._estimated and self.asked >= self.estimate_after:
            self._estimated = True
            self.say(f"[{self.phase}] estimate from the first {self.asked} calls: {self._eta()}")
        if now - self._last >= self.interval_s or self.done == self.total:
            self._last = now
            self.say(self.line())

    def _eta(self) -> str:
        elapsed = time.monotonic() - self._start
        if not self.asked or elapsed <= 0:
            return "time left unknown"
        rate = self.asked / elapsed
        return f"{rate:.2f} calls/s, ~{human_seconds((self.total - self.done) / rate)} left"

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"[{self.phase}] {self.done}/{self.total} ({pct:.0f}%) {self._eta()}"
