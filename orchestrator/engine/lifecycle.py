"""One model's engine as an explicit state machine: spawn, wait ready, watch, restart, stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from orchestrator.config import OrchestratorSettings, VllmSettings
from orchestrator.engine import device_check, probe, process, start_method
from orchestrator.engine.launch import Launch
from orchestrator.engine.logfile import EngineLog
from orchestrator.engine.restart_policy import RestartPolicy
from orchestrator.engine.standby.slot import StandbyKey, StandbySettings, StandbySlot
from orchestrator.engine.starts import Cause, StartRecord
from orchestrator.engine.states import Desired, State, check, log_change
from orchestrator.engine.terminate import ORPHAN_GRACE_S, terminate_tree
from orchestrator.gpu.inventory import Slice
from orchestrator.units import MIB

log = logging.getLogger(__name__)
_T = TypeVar("_T")

READY_POLL_S = 0.2
# Lines vLLM (uvicorn) prints the moment it starts listening: probe at once instead of waiting.
_LISTENING_MARKERS = (b"Application startup complete", b"Uvicorn running on")
MEMORY_MARGIN_BYTES = 256 * MIB
_STOP_REQUESTED = "stop requested"


@dataclass(frozen=True)
class EngineSpec:
    name: str
    model: str
    served_model_name: str
    host: str
    port: int
    slice: Slice | None
    shared_slice: bool
    launch: Launch
    settings: VllmSettings
    overrides: dict[str, Any]
    startup_timeout_s: float
    standby: StandbySettings = field(default_factory=StandbySettings)

    @property
    def probe_host(self) -> str:
        return (
            "127.0.0.1"
            if self.host in ("0.0.0.0", "")
            else ("::1" if self.host == "::" else self.host)
        )


@dataclass
class ExitInfo:
    code: int | None
    signal: int | None
    at: float
    reason: str


@dataclass
class EngineContext:
    """What an engine needs from the supervisor around it, and from the OS (`ops`)."""

    settings: OrchestratorSettings
    slice_lock: Callable[[str], asyncio.Lock]
    slice_memory: Callable[[str], Awaitable[tuple[int, int] | None]]
    track: Callable[[int, Engine | None], None]  # pid -> engine for the reaper; None untracks
    changed: Callable[[], None]  # persist state
    ops: process.ProcessOps
    # pids holding GPU memory on a slice, per NVML; None when NVML cannot tell
    slice_pids: Callable[[str], Awaitable[set[int] | None]] | None = None


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
    """One model's engine. Commands (start, stop, restart) take the engine's own lock; only the
    engine's methods change its state, reason and desired state; the supervisor's reaper reports
    the main process's exit through on_exit."""

    def __init__(self, spec: EngineSpec, ctx: EngineContext, elog: EngineLog) -> None:
        self.spec = spec
        self.ctx = ctx
        self.log = elog
        self._state = State.STOPPED
        self._desired = Desired.STOPPED
        self._reason: str | None = None
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        self.ready_at: float | None = None
        self.proc: _Proc | None = None
        self._lock = asyncio.Lock()
        self._retired = False
        self._runner: asyncio.Task[None] | None = None
        self._policy = RestartPolicy()
        self._probe_now = asyncio.Event()
        self._baseline_used: int | None = None
        # The standby is the engine's to command; it changes its own state (one writer).
        self.standby = StandbySlot(spec.name, ctx.ops, elog, self._track_standby, ctx.changed)
        self.last_start: StartRecord | None = None
        self._asked: tuple[Cause, float] = ("start", time.time())
        self._last_pids: set[int] = set()  # the previous life's tree, for the memory wait
        self._marks: dict[str, float] = {}  # steps towards the next launch (StartRecord)

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
        if self._state is State.FAILED:
            self._policy.reset()
        self._reason = None
        self._set(State.STARTING)
        self._runner = asyncio.create_task(self._run(), name=f"engine-{self.spec.name}")

    async def _stop(self, desired: Desired, keep_standby: bool = False) -> None:
        self._desired = desired
        if self.proc is not None:
            self._set(State.STOPPING)
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
        self._set(State.STOPPED)
        self.ready_at = None

    def set_spec(self, spec: EngineSpec) -> None:
        """The spec for the next life (a reload's: the one running keeps what it started with).
        The standby follows it at once: it is made for the next life."""
        self.spec = spec
        if self._state in (State.READY, State.UNHEALTHY):
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
        self._reason = reason
        self._set(State.FAILED)

    # ----- status -----

    @property
    def state(self) -> State:
        return self._state

    @property
    def desired(self) -> Desired:
        return self._desired

    @property
    def reason(self) -> str | None:
        """Why the engine is not (or not yet) serving: the last failure, or the health problem."""
        return self._reason

    def uptime(self) -> float | None:
        return None if self.proc is None else time.monotonic() - self.proc.started_mono

    def _set(self, state: State) -> None:
        """The one place state changes, checked against the transition table."""
        if state is self._state:
            return
        log_change(log, self.spec.name, self._state, state, check)
        self._state = state
        self.ctx.changed()

    def _force(self, state: State, reason: str) -> None:
        """The one way around the transition table, for when the lifecycle code itself failed:
        the state it left cannot be trusted, whatever it is."""
        old, name = self._state.value, self.spec.name
        log.warning("%s: %s -> %s forced: %s", name, old, state.value, reason)
        self._reason = reason
        self._state = state
        self.ctx.changed()

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
                self._force(State.FAILED, f"internal error in the daemon: {e!r}")

    async def _lives(self) -> None:
        """Run one life after another, backing off between them, until one fails for good."""
        while True:
            started = time.monotonic()
            try:
                await self._one_life()
            except _Failure as f:
                self._asked = ("retry", f.at)
                self._reason = f.reason
                self.log.note(f.reason)
                if f.final:
                    self._fail(f.reason)
                    await self.standby.discard("the engine failed")
                    return
            s, now = self.ctx.settings, time.monotonic()
            up_s = None if self.ready_at is None else now - started
            self.ready_at = None
            delay = self._policy.failed(s, now, up_s)
            if delay is None:
                self._fail(
                    f"{self._policy.failures} failures within {s.restart_window_s:g}s; "
                    f"giving up. Last: {self._reason}"
                )
                await self.standby.discard("the engine failed")
                return
            self._set(State.BACKOFF)
            await asyncio.sleep(delay)
            self.restarts += 1
            self._set(State.STARTING)

    def _fail(self, reason: str) -> None:
        self._reason = reason
        tail = " | ".join(self.log.tail(5))
        log.error("%s failed: %s (last log lines: %s)", self.spec.name, reason, tail)
        self._set(State.FAILED)

    async def _one_life(self) -> None:
        spec = self.spec
        lock = self.ctx.slice_lock(spec.slice.uuid) if spec.slice and spec.shared_slice else None
        # Engines sharing one GPU start one after another: vLLM mis-sizes memory otherwise.
        async with lock if lock is not None else contextlib.nullcontext():
            self._marks["life_at"] = time.time()
            await self._await_memory_release()
            self._marks["released_at"] = time.time()
            holder = self.ctx.ops.port_holder(spec.host, spec.port)
            if holder is not None:
                raise _Failure(f"port {spec.port} is already in use by {holder}", final=True)
            await self._spawn()
            try:
                await self._wait_ready()
                mark = self.proc.log_mark if self.proc else self.log.count
                wrong = device_check.verify(spec.slice, self.log.lines_since(mark), self.log.note)
                if wrong is not None:
                    raise _Failure(wrong, final=True)
            except BaseException as e:
                await self._cleanup(e)
                raise
        self.ready_at = time.monotonic()
        self._reason = None  # what went wrong before stays in last_exit
        self._set(State.READY)
        if self.last_start is not None:
            took = self.last_start.ready(time.time())
            self.log.note(took)
            log.info("%s: %s", spec.name, took)
            self._observe_start_method(self.last_start)
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
            self._reason = cause.reason
            self._set(State.STOPPING)
        stopped = isinstance(cause, asyncio.CancelledError)  # only stop() cancels the runner
        await self._terminate(_STOP_REQUESTED if stopped else "cleaning up after the engine")
        self._marks["cleaned_at"] = time.time()

    async def _await_memory_release(self) -> None:
        spec = self.spec
        if spec.slice is None:
            return
        if spec.shared_slice:
            # The slice's total includes the other engine's memory: wait for our own processes.
            await self._await_own_memory_release(spec.slice.uuid)
            return
        first = await self.ctx.slice_memory(spec.slice.uuid)
        if first is None:
            return
        if self._baseline_used is None:
            self._baseline_used = first[0]
            return
        limit = self._baseline_used + MEMORY_MARGIN_BYTES
        if first[0] > limit:
            self.log.note(f"waiting for slice memory to be released ({first[0] >> 20} MiB in use)")
        started = time.monotonic()
        uuid = spec.slice.uuid

        def busy(memory: tuple[int, int] | None) -> bool:
            return memory is not None and memory[0] > limit

        last, late = await self._poll_while(
            busy, functools.partial(self.ctx.slice_memory, uuid), 0.5
        )
        if last is None:
            return
        if late:
            self.log.note(f"slice still shows {last[0] >> 20} MiB in use; starting anyway")
            return
        self.log.note(
            f"slice memory released: {last[0] >> 20} MiB in use, idle {self._baseline_used >> 20} "
            f"MiB (checked for {time.monotonic() - started:.1f}s)"
        )

    async def _await_own_memory_release(self, uuid: str) -> None:
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
        self,
        busy: Callable[[_T], bool],
        read: Callable[[], Awaitable[_T]],
        interval: float,
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
        self.proc = _Proc(
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
        marks = {k: at for k, at in self._marks.items() if at >= asked_at}  # this start's only
        self._marks = {}
        self.last_start = StartRecord(
            via,
            cause,
            asked_at,
            self.proc.started,
            launch.fork,
            fork_reason=launch.fork_reason,
            cleaned_at=marks.get("cleaned_at"),
            life_at=marks.get("life_at"),
            released_at=marks.get("released_at"),
        )
        loop.add_reader(fd, self._on_output, self.proc)
        self.ctx.track(pid, self)
        self._set(State.STARTING)
        self.ctx.changed()

    def _observe_start_method(self, record: StartRecord) -> None:
        """What vLLM really did with the start method asked for, into status and the log."""
        if self.proc is None:
            return
        record.observed = start_method.observe(
            self.proc.pid, self.log.lines_since(self.proc.log_mark)
        )
        asked = start_method.StartMethod("fork" if record.fork else "spawn", record.fork_reason)
        self.log.note(start_method.describe(asked, record.observed))

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
        if data and self._state is State.STARTING and any(m in data for m in _LISTENING_MARKERS):
            self._probe_now.set()

    def _drain(self, proc: _Proc) -> None:
        """Log what the engine already wrote, so its last lines are read before it is judged."""
        while proc.fd >= 0 and self._read_once(proc):
            pass

    def on_exit(self, pid: int, status: int) -> None:
        """Called by the supervisor's reaper the moment the engine's main process (or its
        standby) exits."""
        proc = self.proc
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
        self.last_exit = ExitInfo(code=code, signal=sig, at=time.time(), reason=why or how)
        return f"engine {how} {during}" + (f": {why}" if why else "")

    async def _wait_ready(self) -> None:
        proc = self.proc
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
        proc = self.proc
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
                    self._reason = None
                    self._set(State.READY)
                failures = 0
                continue
            failures += 1
            self._reason = f"{problem} ({failures}/{s.unhealthy_threshold})"
            self._set(State.UNHEALTHY)
            if failures >= s.unhealthy_threshold:
                self.last_exit = ExitInfo(None, None, time.time(), f"unhealthy: {problem}")
                raise _Failure(f"unhealthy: {problem} {failures} times in a row; restarting")

    async def _terminate(self, why: str) -> None:
        """Take the engine's whole tree down and forget the process."""
        proc = self.proc
        if proc is None:
            return
        ops = self.ctx.ops
        tracked = [*proc.tree, *ops.descendants(proc.pid)]
        self._last_pids = {proc.pid, *(p.pid for p in tracked)}
        grace = self.ctx.settings.stop_grace_s
        if proc.exited.done():
            # The server is gone: what is left (an orphaned EngineCore) has nothing to drain.
            grace = min(grace, ORPHAN_GRACE_S)
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
        self.proc = None
        self.ctx.changed()
