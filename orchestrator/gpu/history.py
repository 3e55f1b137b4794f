"""The last minutes of GPU telemetry, sampled in the background and kept in memory only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.gpu.nvml import GpuSample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuPoint:
    """One GPU at one instant: SM utilisation (None: NVML has none, e.g. MIG on) and memory."""

    sm_util_pct: int | None
    memory_used_bytes: int


@dataclass(frozen=True)
class Tick:
    at: float  # wall clock, what a browser can place on a time axis
    gpus: dict[int, GpuPoint]  # by GPU index


class GpuHistory:
    """A ring of samples every `interval_s` over `keep_s`, plus the latest full sample.

    One NVML sample per interval whoever looks, so viewers never add NVML calls.
    """

    def __init__(
        self, sample: Callable[[], list[GpuSample]], interval_s: float = 2.0, keep_s: float = 600.0
    ) -> None:
        self._sample = sample
        self.interval_s = interval_s
        self.ticks: deque[Tick] = deque(maxlen=max(1, round(keep_s / interval_s)))
        self.latest: list[GpuSample] = []
        self.latest_at: float | None = None
        self._failing = False

    def record(self, samples: list[GpuSample], at: float) -> None:
        self.latest, self.latest_at = samples, at
        self.ticks.append(
            Tick(at, {g.index: GpuPoint(g.sm_util_pct, g.memory_used_bytes) for g in samples})
        )

    def since(self, at: float) -> list[Tick]:
        """Ticks newer than `at`, oldest first (a browser asks only for what it lacks)."""
        return [t for t in self.ticks if t.at > at]

    async def run(self) -> None:
        """Sample until cancelled; NVML errors are logged once per outage and skipped."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                samples = await asyncio.to_thread(self._sample)
            except Exception as e:  # telemetry must never take the daemon down
                if not self._failing:
                    log.warning("GPU sampling failed (history paused until it works): %s", e)
                self._failing = True
            else:
                if self._failing:
                    log.info("GPU sampling works again")
                self._failing = False
                self.record(samples, time.time())
            # A fixed schedule: a slow sample does not stretch the interval.
            next_at = max(next_at + self.interval_s, loop.time())
            await asyncio.sleep(next_at - loop.time())
