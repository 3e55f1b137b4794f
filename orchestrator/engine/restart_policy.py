"""When a failed engine may try again: doubling backoff, a failure budget per window, reset once
it has stayed up long enough."""

from __future__ import annotations

from collections import deque

from orchestrator.config import OrchestratorSettings


class RestartPolicy:
    def __init__(self) -> None:
        self._failures: deque[float] = deque()  # monotonic times within the window
        self._next_delay: float | None = None  # None: the initial backoff

    @property
    def failures(self) -> int:
        """Failures counted in the window at the last `failed` call."""
        return len(self._failures)

    def reset(self) -> None:
        """Forget past failures: an admin's start or restart, or a life that proved stable."""
        self._failures.clear()
        self._next_delay = None

    def failed(self, s: OrchestratorSettings, now: float, up_s: float | None) -> float | None:
        """Count a failure at `now`; the delay before the next try, or None to give up.

        `up_s` is how long the life that ended had run, or None if it never became ready. The
        settings are read at each failure: a reload may have changed them.
        """
        if up_s is not None and up_s >= s.stable_after_s:
            self.reset()
        self._failures.append(now)
        while self._failures and now - self._failures[0] > s.restart_window_s:
            self._failures.popleft()
        if len(self._failures) > s.max_restarts:
            return None
        delay = s.backoff_initial_s if self._next_delay is None else self._next_delay
        delay = min(delay, s.backoff_max_s)  # backoff_max_s is a cap, even a lowered one
        self._next_delay = delay * 2
        return delay
