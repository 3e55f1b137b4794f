"""One model's engine as an explicit state machine: spawn, wait ready, watch, restart, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.engine import device_check, probe, process
from orchestrator.engine.logfile import EngineLog
from orchestrator.engine.memory_wait import MemoryWait
from orchestrator.engine.restart_policy import RestartPolicy
from orchestrator.engine.spec import EngineContext, EngineSpec, EngineStatus, ExitInfo
from orchestrator.engine.standby.slot import StandbyKey, StandbySlot
from orchestrator.engine.starts import Cause, StartRecord
from orchestrator.engine.states import REASONS, TRANSITIONS, Desired, Machine, State
from orchestrator.engine.terminate import terminate_tree

__all__ = ["Engine", "EngineContext", "EngineSpec", "EngineStatus", "ExitInfo"]

log = logging.getLogger(__name__)

READY_POLL_S = 0.2
# Lines vLLM (uvicorn) prints the moment it starts listening: probe at once instead of waiting.
_LISTENING_MARKERS = (b"Application startup complete", b"Uvicorn running on")
_STOP_REQUESTED = "stop requested"


class _Failure(Exception):
    """This life of the engine ended; `final` means retrying cannot help."""

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final
        self.at = time.time()  # when it was found: before the tree is taken down


@dataclass
class _Proc:
    pid: int
    fd: int
    started: float  # wall clock
    started_mono: float
    exited: asyncio.Future[int]
    log_mark: int
    ident: process.ProcessId | None  # read once: every state save records it
    tree: list[process.ProcessId] = field(default_factory=list)


class Engine:
    """One model's engine. Commands (start, stop, restart) take the engine's own lock, so they
    run one at a time; the state and its reason change only through `self._m.move`, from the
    commands or from the one runner task that a start creates and a stop cancels (all on the
    event loop's thread). Readers take status(); the supervisor's reaper reports the main
    process's exit through on_exit."""

    def __init__(self, spec: EngineSpec, ctx: EngineContext, elog: EngineLog) -> None:
        self.spec = spec
        self.ctx = ctx
        self.log = elog
        self._m = Machine(
            spec.name, "engine", State.STOPPED, (TRANSITIONS, REASONS), log, ctx.changed
        )
        self._desired = Desired.STOPPED
        self._restarts = 0
        self._last_exit: ExitInfo | None = None
        self._ready_at: float | None = None
        self._proc: _Proc | None = None
        self._lock = asyncio.Lock()
        self._retired = False
        self._runner: asyncio.Task[None] | None = None
        self._policy = RestartPolicy()
        self._probe_now = asyncio.Event()
        self._memory = MemoryWait(ctx, elog)
        # The standby is the engine's to command; it changes its own state (one writer).
        self.standby = StandbySlot(spec.name, ctx.ops, elog, self._track_standby, ctx.changed)
        self._last_start: StartRecord | None = None
        self._asked: tuple[Cause, float] = ("start", time.time())

    # ----- commands: each takes the engine's lock, so commands on one model run one at a time -----

    async def start(self) -> None:
        """Run the engine (and keep it running) unless it already is; a failed engine starts
        afresh."""
        async with self._lock:
            if not self._retired:
                self._start(("start", time.time()))

    async def stop(self, desired: Desired = Desired.STOPPED) -> None:
        """Take the whole tree down; `desired` is what it should be next time the daemon starts
        (RUNNING when the daemon itself is shutting down and the model was running)."""
        async with self._lock:
            await self._stop(desired)

    async def restart(self, spec: EngineSpec | None = None) -> None:
        """Stop, take the new spec if given, and start afresh (restart budget reset); the standby
        is kept for the new start, which uses it if the new spec's command and environment match."""
        asked = time.time()
        async with self._lock:
            if self._retired:
                return
            await self._stop(Desired.RUNNING, keep_standby=True)
            if spec is not None:
                self.spec = spec
            self._policy.reset()
            self._start(("restart", asked))

    def retire(self) -> None:
        """Refuse every later start and restart, including those already waiting for the lock:
        the daemon is shutting down, or the model was removed. A stop() should follow."""
        self._retired = True

    def _start(self, asked: tuple[Cause, float]) -> None:
        self._desired = Desired.RUNNING
        if self._runner is not None and not self._runner.done():
            return
        self._asked = asked
        if self._m.state is State.FAILED:
            self._policy.reset()
        self._m.move(State.STARTING, None)
        self._runner = asyncio.create_task(self._run(), name=f"engine-{self.spec.name}")

    async def _stop(self, desired: Desired, keep_standby: bool = False) -> None:
        self._desired = desired
        if self._proc is not None:
            self._m.move(State.STOPPING, self._m.reason)  # a stop keeps the last failure's reason
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        # Side by side: a standby that ignores its channel and SIGTERM delays the stop by its
        # own grace at most, not by its grace plus the engine's.
        stops = [self._terminate(_STOP_REQUESTED)]
        if not keep_standby:
            stops.append(self.standby.discard("the model was stopped"))
        await asyncio.gather(*stops)
        self._m.move(State.STOPPED, self._m.reason)
        self._ready_at = None

    def set_spec(self, spec: EngineSpec) -> None:
        """The spec for the next life (a reload's: the one running keeps what it started with).
        The standby follows it at once: it is made for the next life."""
        self.spec = spec
        if self._m.state in (State.READY, State.UNHEALTHY):
            self.standby.prepare(spec.launch, spec.standby, spec.startup_timeout_s)
        else:
            self.standby.reconcile(StandbyKey.of(spec.launch, spec.standby), spec.standby.enabled)

    def want(self, desired: Desired) -> None:
        """Record what was asked for at once (status shows it, it is saved); a command follows."""
        if desired is not self._desired:
            self._desired = desired
            self.ctx.changed()

    def cannot_start(self, reason: str) -> None:
        """A stopped engine that cannot be started at all (not placed) is failed with the reason."""
        self._m.move(State.FAILED, reason)

    # ----- status -----

    @property
    def state(self) -> State:
        return self._m.state

    @property
    def desired(self) -> Desired:
        return self._desired

    @property
    def reason(self) -> str | None:
        """Why the engine is not (or not yet) serving: the last failure, or the health problem."""
        return self._m.reason

    def status(self) -> EngineStatus:
        """The engine now, as an immutable snapshot."""
        proc = self._proc
        return EngineStatus(
            name=self.spec.name,
            state=self._m.state,
            desired=self._desired,
            reason=self._m.reason,
            pid=None if proc is None else proc.pid,
            process=None if proc is None else proc.ident,
            uptime_s=None if proc is None else time.monotonic() - proc.started_mono,
            restarts=self._restarts,
            last_exit=self._last_exit,
            last_start=self._last_start,
            standby=self.standby.status(),
            standby_process=self.standby.record(),
        )

    # ----- the lifecycle -----

    async def _run(self) -> None:
        try:
            await self._lives()
        except Exception as e:  # a bug, or the log's disk is full; a stop's cancel passes
            log.exception("%s: the engine's supervision failed", self.spec.name)
            try:
                await self.standby.discard("internal error in the daemon")
                await self._terminate("cleaning up after an internal error")
            finally:
                self._m.force(State.FAILED, f"internal error in the daemon: {e!r}")

    async def _lives(self) -> None:
        """Run one life after another, backing off between them, until one fails for good."""
        while True:
            started, failure = time.monotonic(), self._m.reason
            try:
                await self._one_life()
            except _Failure as f:
                self._asked = ("retry", f.at)
                self.log.note(f.reason)
                if f.final:
                    await self._fail(f.reason)
                    return
                failure = f.reason
            s, now = self.ctx.settings, time.monotonic()
            up_s = None if self._ready_at is None else now - started
            self._ready_at = None
            delay = self._policy.failed(s, now, up_s)
            if delay is None:
                await self._fail(
                    f"{self._policy.failures} failures within {s.restart_window_s:g}s; "
                    f"giving up. Last: {failure}"
                )
                return
            self._m.move(State.BACKOFF, failure)
            await asyncio.sleep(delay)
            self._restarts += 1
            self._m.move(State.STARTING, failure)  # why it is starting again

    async def _fail(self, reason: str) -> None:
        tail = " | ".join(self.log.tail(5))
        log.error("%s failed: %s (last log lines: %s)", self.spec.name, reason, tail)
        self._m.move(State.FAILED, reason)
        await self.standby.discard("the engine failed")

    async def _one_life(self) -> None:
        spec = self.spec
        lock = self.ctx.slice_lock(spec.slice.uuid) if spec.slice and spec.shared_slice else None
        # Engines sharing one GPU start one after another: vLLM mis-sizes memory otherwise.
        async with lock if lock is not None else contextlib.nullcontext():
            await self._memory.before_start(spec.slice, spec.shared_slice)
            holder = self.ctx.ops.port_holder(spec.host, spec.port)
            if holder is not None:
                raise _Failure(f"port {spec.port} is already in use by {holder}", final=True)
            await self._spawn()
            try:
                await self._wait_ready()
                mark = self._proc.log_mark if self._proc else self.log.count
                wrong = device_check.verify(spec.slice, self.log.lines_since(mark), self.log.note)
                if wrong is not None:
                    raise _Failure(wrong, final=True)
            except BaseException as e:
                await self._cleanup(e)
                raise
        self._ready_at = time.monotonic()
        if self._last_start is not None:
            self._last_start = self._last_start.ready(time.time())
        self._m.move(State.READY, None)  # what went wrong before stays in last_exit
        if self._last_start is not None:
            took = self._last_start.took()
            self.log.note(took)
            log.info("%s: %s", spec.name, took)
        # Prepared now, not earlier: the engine's own start has the host's CPUs to itself.
        self.standby.prepare(self.spec.launch, self.spec.standby, self.spec.startup_timeout_s)
        try:
            await self._watch()
        except BaseException as e:
            await self._cleanup(e)
            raise

    async def _cleanup(self, cause: BaseException) -> None:
        """Take down what is left of a failed engine; say so at once, the tree may take a while."""
        if isinstance(cause, _Failure):
            self._m.move(State.STOPPING, cause.reason)
        stopped = isinstance(cause, asyncio.CancelledError)  # only stop() cancels the runner
        await self._terminate(_STOP_REQUESTED if stopped else "cleaning up after the engine")

    async def _spawn(self) -> None:
        launch, standby = self.spec.launch, self.spec.standby
        fork = " (EngineCore by fork)" if launch.fork else ""
        handed = await self.standby.take(launch, standby)
        if handed is not None:
            pid, fd, ident = handed.pid, handed.fd, handed.ident
            how = "imports done" if handed.imported else "still importing"
            self.log.note(f"starting from standby pid {pid} ({how}){fork}: {' '.join(launch.argv)}")
        else:
            try:
                self.log.note(f"starting{fork}: {' '.join(launch.argv)}")
                pid, fd = self.ctx.ops.spawn(launch.argv, launch.spawn_env())
            except (OSError, ValueError) as e:
                raise _Failure(
                    f"cannot run engine command {launch.argv[0]!r}: {e}", final=True
                ) from e
            ident = self.ctx.ops.ident(pid)
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._proc = _Proc(
            pid=pid,
            fd=fd,
            started=time.time(),
            started_mono=time.monotonic(),
            exited=loop.create_future(),
            log_mark=self.log.count,
            ident=ident,
        )
        cause, asked_at = self._asked
        via: Literal["standby", "plain"] = "plain" if handed is None else "standby"
        self._last_start = StartRecord(via, cause, asked_at, self._proc.started, launch.fork)
        loop.add_reader(fd, self._on_output, self._proc)
        self.ctx.track(pid, self)
        self.ctx.changed()

    def _read_once(self, proc: _Proc) -> bytes:
        """One non-blocking read into the log; b"" when nothing waits; closes the pipe at EOF."""
        data = process.read_output(proc.fd)
        if not data:
            if data is not None:
                proc.fd = -1
            return b""
        self.log.write(data)
        return data

    def _on_output(self, proc: _Proc) -> None:
        data = self._read_once(proc)
        if data and self._m.state is State.STARTING and any(m in data for m in _LISTENING_MARKERS):
            self._probe_now.set()

    def _drain(self, proc: _Proc) -> None:
        """Log what the engine already wrote, so its last lines are read before it is judged."""
        while proc.fd >= 0 and self._read_once(proc):
            pass

    def on_exit(self, pid: int, status: int) -> None:
        """Called by the supervisor's reaper the moment the engine's main process (or its
        standby) exits."""
        proc = self._proc
        if proc is not None and proc.pid == pid:
            if not proc.exited.done():
                proc.exited.set_result(status)
        else:
            self.standby.on_exit(pid, status)

    def _track_standby(self, pid: int, tracked: bool) -> None:
        self.ctx.track(pid, self if tracked else None)

    def _exit_reason(self, proc: _Proc, status: int, during: str) -> str:
        code, sig = process.exit_description(status)
        how = f"killed by signal {signal.Signals(sig).name}" if sig else f"exited with code {code}"
        self._drain(proc)
        why = self.log.error_reason(proc.log_mark)
        self._last_exit = ExitInfo(code=code, signal=sig, at=time.time(), reason=why or how)
        return f"engine {how} {during}" + (f": {why}" if why else "")

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = proc.started_mono + self.spec.startup_timeout_s
        while True:
            if proc.exited.done():
                raise _Failure(self._exit_reason(proc, proc.exited.result(), "during startup"))
            # Cleared before the probe, not after: a "listening" line that comes while a refused
            # probe is under way then cuts the wait below short instead of being lost.
            self._probe_now.clear()
            if await probe.health(self.spec.probe_host, self.spec.port, 2.0) is None:
                # The listener may have come up after the exit check; make sure it is ours.
                if not proc.exited.done():
                    return
                continue
            if time.monotonic() >= deadline:
                raise _Failure(
                    f"not ready within startup_timeout_s={self.spec.startup_timeout_s:g}s"
                )
            wake = asyncio.ensure_future(self._probe_now.wait())
            waiters: list[asyncio.Future[Any]] = [proc.exited, wake]
            await asyncio.wait(waiters, timeout=READY_POLL_S, return_when="FIRST_COMPLETED")
            wake.cancel()

    async def _watch(self) -> None:
        proc = self._proc
        assert proc is not None
        s = self.ctx.settings
        proc.tree = self.ctx.ops.descendants(proc.pid)
        failures = 0
        while True:
            done, _ = await asyncio.wait([proc.exited], timeout=s.health_interval_s)
            if done:
                raise _Failure(self._exit_reason(proc, proc.exited.result(), "while serving"))
            check = asyncio.ensure_future(
                probe.health(self.spec.probe_host, self.spec.port, s.health_timeout_s)
            )
            racing: list[asyncio.Future[Any]] = [proc.exited, check]
            await asyncio.wait(racing, return_when="FIRST_COMPLETED")
            if not check.done():
                check.cancel()
                continue
            problem = check.result()
            if problem is None:
                if failures:
                    self._m.move(State.READY, None)
                failures = 0
                continue
            failures += 1
            self._m.move(State.UNHEALTHY, f"{problem} ({failures}/{s.unhealthy_threshold})")
            if failures >= s.unhealthy_threshold:
                self._last_exit = ExitInfo(None, None, time.time(), f"unhealthy: {problem}")
                raise _Failure(f"unhealthy: {problem} {failures} times in a row; restarting")

    async def _terminate(self, why: str) -> None:
        """Take the engine's whole tree down and forget the process."""
        proc = self._proc
        if proc is None:
            return
        ops = self.ctx.ops
        tracked = [*proc.tree, *ops.descendants(proc.pid)]
        self._memory.remember({proc.pid, *(p.pid for p in tracked)})
        grace = self.ctx.settings.stop_grace_s
        # Session leader: its pid is the group id.
        t = await terminate_tree(ops, proc.pid, tracked, grace, self.spec.name, proc.exited)
        self._drain(proc)  # the engine's last words come before the daemon's notes
        if t.killed:
            self.log.note(f"{why}: still running after {grace:g}s grace, SIGKILL: {t.killed}")
        if t.survivors:
            self.log.note(f"processes survive SIGKILL: {ops.describe(t.survivors)}")
        else:
            self.log.note(f"{why}: engine tree gone in {t.seconds:.2f}s")
        if proc.fd >= 0:  # a survivor still holds the pipe: stop listening anyway
            process.close_output(proc.fd)
            proc.fd = -1
        if not proc.exited.done():
            self.ctx.track(proc.pid, None)
        self._proc = None
        self.ctx.changed()
