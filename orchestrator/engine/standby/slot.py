"""A model's standby, owned by its Engine: prepared in the background once the engine is ready,
handed the next start's argv, discarded when the engine's command or environment changes or the
model stops. Only this object changes the standby's state (engine/states.py: STANDBY_TRANSITIONS).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.config import Config
from orchestrator.engine.launch import Launch
from orchestrator.engine.logfile import EngineLog
from orchestrator.engine.process import (
    ProcessId,
    ProcessOps,
    close_output,
    exit_description,
    read_output,
)
from orchestrator.engine.standby.channel import Standby, StandbyError, StandbyReady
from orchestrator.engine.states import (
    STANDBY_REASONS,
    STANDBY_TRANSITIONS,
    Machine,
    StandbyState,
)
from orchestrator.engine.terminate import terminate_tree
from orchestrator.inengine.standby_plan import EXEC

log = logging.getLogger(__name__)

# A waiting standby exits the moment its channel closes; SIGTERM then SIGKILL are the fallback.
GRACE_S = 2.0
# Status pages read the RSS of every standby: at most once a second each, not once per request.
RSS_TTL_S = 1.0
OFF, PREPARING, READY, UNAVAILABLE = (
    StandbyState.OFF,
    StandbyState.PREPARING,
    StandbyState.READY,
    StandbyState.UNAVAILABLE,
)


@dataclass(frozen=True)
class StandbySettings:
    """What models.toml asks of a model's standby."""

    enabled: bool = False
    preload: tuple[str, ...] | None = None  # None: derived from the engine command

    @classmethod
    def of(cls, cfg: Config, name: str) -> StandbySettings:
        enabled, preload = cfg.standby_of(name)
        return cls(enabled, None if preload is None else tuple(preload))


@dataclass(frozen=True)
class StandbyKey:
    """What a standby was started with. A start whose key differs cannot use it: its imports
    ran under another command or environment. Settings change only argv after the command."""

    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    preload: tuple[str, ...] | None

    @classmethod
    def of(cls, launch: Launch, settings: StandbySettings) -> StandbyKey:
        return cls(launch.command, tuple(sorted(launch.env.items())), settings.preload)


@dataclass(frozen=True)
class Handover:
    """A standby that has been sent the engine's argv: from now on it is the engine."""

    pid: int
    fd: int  # its stdout and stderr
    ident: ProcessId | None
    imported: bool  # its imports were done; else the engine waits for the rest of them


@dataclass(frozen=True)
class StandbyStatus:
    state: StandbyState
    pid: int | None
    rss_bytes: int | None
    prepare_s: float | None  # how long its imports took, once done
    reason: str | None  # why there is none, or why the last one ended


@dataclass
class _Held:
    """One standby process of this slot, from its spawn until it is handed over or gone."""

    sb: Standby
    key: StandbyKey
    ident: ProcessId | None
    exited: asyncio.Future[int]
    fd: int
    partial: bytes = b""  # its output after the last newline
    ready: StandbyReady | None = None
    watcher: asyncio.Task[None] | None = None


class StandbySlot:
    """At most one standby for one model. `track(pid, True)` makes the daemon's reaper report the
    standby's exit to the engine, which passes it on through on_exit."""

    def __init__(
        self,
        name: str,
        ops: ProcessOps,
        elog: EngineLog,
        track: Callable[[int, bool], None],
        changed: Callable[[], None],
    ) -> None:
        self.name = name
        self.ops = ops
        self.log = elog
        self.track = track
        self.changed = changed
        # Its state and the reason: why there is none, or why the last one ended.
        self._m = Machine(
            f"{name} standby", "standby", OFF, (STANDBY_TRANSITIONS, STANDBY_REASONS), log
        )
        self._held: _Held | None = None
        self._unavailable_for: StandbyKey | None = None
        self._procs: dict[int, _Held] = {}  # every standby process not yet gone, by pid
        self._ending: set[asyncio.Task[None]] = set()
        # pid and state it was read in, when, value: a reading taken while the standby still
        # imports (a save reads status at its spawn) is not shown once it is ready.
        self._rss: tuple[int, StandbyState, float, int | None] = (0, OFF, 0.0, None)

    # ----- what the Engine asks -----

    @property
    def state(self) -> StandbyState:
        return self._m.state

    def prepare(self, launch: Launch, settings: StandbySettings, timeout_s: float) -> None:
        """Make sure a standby for `launch` is there or on its way, unless it is not wanted or
        cannot work; one that no longer matches is discarded first."""
        key = StandbyKey.of(launch, settings)
        self.reconcile(key, settings.enabled)
        if not settings.enabled or self._m.state is not OFF:
            return
        try:
            sb = Standby.spawn(
                launch.command, launch.env, settings.preload, label=self.name, spawn=self.ops.spawn
            )
        except StandbyError as e:
            self._unavailable_for = key
            why = f"the engine command cannot be imported ahead: {e}"
            self._m.move(UNAVAILABLE, why)
            self.log.note(f"no standby: {why}; every start is a plain launch")
            return
        except (OSError, ValueError) as e:
            self._m.move(OFF, f"cannot start a standby: {e}")
            self.log.note(f"cannot start a standby: {e}")
            return
        loop = asyncio.get_running_loop()
        held = _Held(sb, key, self.ops.ident(sb.pid), loop.create_future(), sb.output_fd)
        os.set_blocking(held.fd, False)
        loop.add_reader(held.fd, self._on_output, held)
        self.track(sb.pid, True)
        self._held = self._procs[sb.pid] = held
        self._m.move(PREPARING, None)
        held.watcher = loop.create_task(self._watch(held, timeout_s), name=f"standby-{self.name}")
        self.changed()

    def reconcile(self, key: StandbyKey, enabled: bool) -> None:
        """Drop a standby (or a verdict that none can work) made for another key."""
        if self._m.state is UNAVAILABLE and (not enabled or key != self._unavailable_for):
            self._unavailable_for = None
            self._m.move(OFF, None)
        held = self._held
        if held is not None and (not enabled or key != held.key):
            why = "turned off" if not enabled else "the engine's command or environment changed"
            self._end(held, f"standby discarded: {why}")

    async def take(self, launch: Launch, settings: StandbySettings) -> Handover | None:
        """Hand the engine's argv to the standby when it matches `launch`; None: launch plainly."""
        held = self._held
        if held is None:
            return None
        self.reconcile(StandbyKey.of(launch, settings), settings.enabled)
        if self._held is held and held.watcher is not None:
            held.watcher.cancel()
            await asyncio.wait([held.watcher])  # unlike awaiting it, keeps our own cancel
        if self._held is not held:  # discarded, or it ended while we waited
            await self.settle()
            return None
        if held.exited.done() or held.fd < 0:
            self._end(held, "the standby was gone at the start: plain launch")
            await self.settle()
            return None
        self._drain(held)
        asyncio.get_running_loop().remove_reader(held.fd)
        try:
            held.sb.hand_over(launch.argv, launch.fork)
        except OSError as e:
            self._end(held, f"the standby could not be triggered ({e}): plain launch")
            await self.settle()
            return None
        if held.partial:
            self.log.write_lines(held.partial)  # the engine's own output goes on from here
        self._held = None
        del self._procs[held.sb.pid]
        self._m.move(OFF, self._m.reason)
        self.changed()
        return Handover(held.sb.pid, held.fd, held.ident, imported=held.ready is not None)

    async def discard(self, why: str) -> None:
        """Take the standby down (stop, failure, daemon shutdown) and wait until it is gone."""
        if self._held is not None:
            self._end(self._held, f"standby discarded: {why}")
        await self.settle()

    async def settle(self) -> None:
        """Wait until every standby this slot let go of is gone."""
        while self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    def on_exit(self, pid: int, status: int) -> bool:
        """The reaper's report; False when `pid` is not one of this slot's standbys."""
        held = self._procs.get(pid)
        if held is None:
            return False
        if not held.exited.done():
            held.exited.set_result(status)
        return True

    def record(self) -> ProcessId | None:
        """The standby process to stop after a daemon crash (state.json), if any."""
        return None if self._held is None else self._held.ident

    def status(self) -> StandbyStatus:
        held = self._held
        pid = None if held is None else held.sb.pid
        return StandbyStatus(
            state=self._m.state,
            pid=pid,
            rss_bytes=None if pid is None else self._rss_of(pid),
            prepare_s=None if held is None or held.ready is None else held.ready.prepare_s,
            reason=self._m.reason,
        )

    # ----- the standby's life -----

    async def _watch(self, held: _Held, timeout_s: float) -> None:
        """Wait for the standby's imports, then for its exit; an end here is its own failure."""
        try:
            async with asyncio.timeout(timeout_s):
                ready = await held.sb.ready()
        except StandbyError as e:
            if e.refused:
                self._end(held, f"standby refused: {e}", unavailable=True)
            else:
                self._end(held, f"the standby ended before it was ready: {e}")
            return
        except TimeoutError:
            self._end(held, f"the standby was not ready within {timeout_s:g}s")
            return
        except (OSError, ValueError, KeyError, TypeError) as e:  # a garbled message
            self._end(held, f"the standby's channel failed: {e!r}")
            return
        if ready.mode == EXEC:
            why = f"the engine command cannot be imported ahead: {ready.reason}"
            self._end(held, f"no standby: {why}", unavailable=True)
            return
        held.ready = ready
        self._m.move(READY, None)
        self.changed()
        await asyncio.wait([held.exited])  # not `await`: a cancel must not cancel the future
        code, sig = exit_description(held.exited.result())
        how = f"signal {sig}" if sig else f"code {code}"
        self._end(held, f"the standby exited ({how}) while waiting; the next start is plain")

    def _end(self, held: _Held, why: str, unavailable: bool = False) -> None:
        """Let go of `held` now and take its process down in the background (settle waits)."""
        if held.watcher is not None and held.watcher is not asyncio.current_task():
            held.watcher.cancel()
        held.sb.close()  # a standby still waiting exits the moment its channel closes
        if self._held is held:
            self._held = None
            if unavailable:
                self._unavailable_for = held.key
            self._m.move(UNAVAILABLE if unavailable else OFF, why)
            self.changed()
        self.log.note(why)
        task = asyncio.get_running_loop().create_task(self._finish(held))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _finish(self, held: _Held) -> None:
        pid = held.sb.pid
        tracked = self.ops.descendants(pid)
        what = f"standby of {self.name}"
        t = await terminate_tree(self.ops, pid, tracked, GRACE_S, what, held.exited)
        if t.survivors:
            self.log.note(f"standby processes survive SIGKILL: {self.ops.describe(t.survivors)}")
        self._drain(held)
        if held.fd >= 0:
            close_output(held.fd)
            held.fd = -1
        if not held.exited.done():
            self.track(pid, False)
        self._procs.pop(pid, None)

    # ----- its output goes to the model's log, whole lines at a time -----

    def _read_once(self, held: _Held) -> bool:
        data = read_output(held.fd)
        if not data:
            if data is not None:
                held.fd = -1
            return False
        lines, sep, held.partial = (held.partial + data).rpartition(b"\n")
        if sep:
            self.log.write_lines(lines + sep)
        return True

    def _on_output(self, held: _Held) -> None:
        self._read_once(held)

    def _drain(self, held: _Held) -> None:
        while held.fd >= 0 and self._read_once(held):
            pass

    def _rss_of(self, pid: int) -> int | None:
        cached_pid, state, at, value = self._rss
        now = time.monotonic()
        if (cached_pid, state) != (pid, self._m.state) or now - at > RSS_TTL_S:
            value = self.ops.rss_bytes(pid)
            self._rss = (pid, self._m.state, now, value)
        return value
