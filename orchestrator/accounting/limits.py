"""In-memory limit state of one gateway process: sliding minute windows, concurrency, owner quotas.

Every check and its reservation happen in one synchronous call on the event loop, with no await
between them, so concurrent requests can never all pass one check before any of them is counted
(the class of https://github.com/BerriAI/litellm/issues/26672).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import date

from orchestrator.accounting.periods import Window

MINUTE_S = 60.0


@dataclass
class MinuteWindow:
    """Amounts spent in the last minute, oldest first; `held` is reserved by requests in flight."""

    entries: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0
    held: int = 0

    def _expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - MINUTE_S:
            self.total -= self.entries.popleft()[1]

    def used(self, now: float) -> int:
        self._expire(now)
        return self.total + self.held

    def add(self, now: float, amount: int) -> None:
        if amount:
            self.entries.append((now, amount))
            self.total += amount

    def retry_after(self, now: float, limit: int) -> int:
        """Whole seconds until the spent amount falls below `limit` (at least 1)."""
        self._expire(now)
        excess = self.total + self.held - limit + 1
        for at, amount in self.entries:
            excess -= amount
            if excess <= 0:
                return max(1, math.ceil(at + MINUTE_S - now))
        return 1  # only requests in flight hold it: one of them ends soon


@dataclass
class KeyState:
    requests: MinuteWindow = field(default_factory=MinuteWindow)
    tokens: MinuteWindow = field(default_factory=MinuteWindow)
    in_flight: int = 0


@dataclass
class OwnerLedger:
    """Tokens an owner spent per UTC day (what the database holds plus what this process added)."""

    by_day: dict[date, int] = field(default_factory=dict)
    held: int = 0  # reserved by this owner's requests in flight

    def spent(self, window: Window) -> int:
        return sum(n for day, n in self.by_day.items() if window.contains(day))

    def charge(self, day: date, tokens: int) -> None:
        self.by_day[day] = self.by_day.get(day, 0) + tokens
