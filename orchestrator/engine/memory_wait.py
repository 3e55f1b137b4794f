"""Before an engine starts on a slice: wait until the previous life's GPU memory is released, so
vLLM does not size its KV cache against memory that is about to be freed."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from orchestrator.engine.logfile import EngineLog
from orchestrator.engine.spec import EngineContext
from orchestrator.gpu.inventory import Slice
from orchestrator.units import MIB

_T = TypeVar("_T")
MEMORY_MARGIN_BYTES = 256 * MIB


class MemoryWait:
    """One engine's memory waits: the slice's idle use (read at the first start) and the pids of
    the life that ended last."""

    def __init__(self, ctx: EngineContext, elog: EngineLog) -> None:
        self.ctx = ctx
        self.log = elog
        self._baseline_used: int | None = None
        self._last_pids: set[int] = set()

    def remember(self, pids: set[int]) -> None:
        """The tree of the life that just ended, for the next start on a shared slice."""
        self._last_pids = pids

    async def before_start(self, slc: Slice | None, shared: bool) -> None:
        if slc is None:
            return
        if shared:
            # The slice's total includes the other engine's memory: wait for our own processes.
            await self._own_release(slc.uuid)
            return
        first = await self.ctx.slice_memory(slc.uuid)
        if first is None:
            return
        if self._baseline_used is None:
            self._baseline_used = first[0]
            return
        limit = self._baseline_used + MEMORY_MARGIN_BYTES
        if first[0] > limit:
            self.log.note(f"waiting for slice memory to be released ({first[0] >> 20} MiB in use)")
        started = time.monotonic()

        def busy(memory: tuple[int, int] | None) -> bool:
            return memory is not None and memory[0] > limit

        read = functools.partial(self.ctx.slice_memory, slc.uuid)
        last, late = await self._poll_while(busy, read, 0.5)
        if last is None:
            return
        if late:
            self.log.note(f"slice still shows {last[0] >> 20} MiB in use; starting anyway")
            return
        self.log.note(
            f"slice memory released: {last[0] >> 20} MiB in use, idle {self._baseline_used >> 20} "
            f"MiB (checked for {time.monotonic() - started:.1f}s)"
        )

    async def _own_release(self, uuid: str) -> None:
        pids, self._last_pids = self._last_pids, set()
        query = self.ctx.slice_pids
        if not pids or query is None:
            return
        holders = await query(uuid)
        if holders is None:
            return
        if held := sorted(pids & holders):
            self.log.note(f"waiting for the previous engine's GPU memory (pids {held}) in NVML")
        started = time.monotonic()

        def busy(holders: set[int] | None) -> bool:
            return holders is not None and bool(pids & holders)

        last, late = await self._poll_while(busy, functools.partial(query, uuid), 0.25)
        if last is None:
            return
        if late:
            self.log.note(f"pids {sorted(pids & last)} still hold GPU memory; starting anyway")
            return
        self.log.note(
            f"previous engine's GPU memory released: none of pids {sorted(pids)} in NVML "
            f"(checked for {time.monotonic() - started:.1f}s)"
        )

    async def _poll_while(
        self, busy: Callable[[_T], bool], read: Callable[[], Awaitable[_T]], interval: float
    ) -> tuple[_T, bool]:
        """Read until not `busy`, up to the release timeout: (last reading, timed out?)."""
        deadline = time.monotonic() + self.ctx.settings.memory_release_timeout_s
        last = await read()
        while busy(last):
            if time.monotonic() >= deadline:
                return last, True
            await asyncio.sleep(interval)
            last = await read()
        return last, False
