"""GPU history: a bounded ring of samples, what a page lacks since a time, NVML outages survived."""

from __future__ import annotations

import asyncio
import logging

import pytest

from orchestrator.gpu.history import GpuHistory, GpuPoint
from orchestrator.gpu.nvml import GpuSample


def sample(index: int, util: int | None, used: int) -> GpuSample:
    return GpuSample(
        index,
        f"GPU-{index}",
        "NVIDIA H100",
        util is None,
        util,
        None,
        None,
        None,
        None,
        None,
        used,
        80,
        (),
    )


def test_the_ring_keeps_the_last_minutes_and_answers_since() -> None:
    h = GpuHistory(lambda: [], interval_s=2.0, keep_s=6.0)
    assert h.ticks.maxlen == 3
    for t in range(5):
        h.record([sample(0, None, t), sample(1, 10 * t, t)], at=100.0 + t)
    assert [t.at for t in h.ticks] == [102.0, 103.0, 104.0]
    assert h.ticks[-1].gpus == {0: GpuPoint(None, 4), 1: GpuPoint(40, 4)}
    assert [t.at for t in h.since(102.0)] == [103.0, 104.0]
    assert h.since(104.0) == []
    assert h.latest[1].sm_util_pct == 40 and h.latest_at == 104.0


async def test_sampling_goes_on_through_nvml_errors(caplog: pytest.LogCaptureFixture) -> None:
    calls = [0]

    def flaky() -> list[GpuSample]:
        calls[0] += 1
        if calls[0] in (2, 3):
            raise RuntimeError("NVML: GPU is lost")
        return [sample(0, 5, calls[0])]

    h = GpuHistory(flaky, interval_s=0.01, keep_s=10)
    with caplog.at_level(logging.INFO, logger="orchestrator.gpu.history"):
        task = asyncio.create_task(h.run())
        while calls[0] < 6:
            await asyncio.sleep(0.01)
        task.cancel()
    assert [t.gpus[0].memory_used_bytes for t in h.ticks][:3] == [1, 4, 5]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("GPU sampling failed" in m for m in messages) == 1  # once per outage
    assert sum("works again" in m for m in messages) == 1
