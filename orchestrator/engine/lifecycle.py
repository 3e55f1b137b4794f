"""One model's engine as an explicit state machine: spawn, wait ready, watch, restart, stop."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import OrchestratorSettings, VllmSettings
from orchestrator.engine import process
from orchestrator.engine.launch import Launch
from orchestrator.engine.logfile import EngineLog
from orchestrator.gpu.inventory import Slice

log = logging.getLogger(__name__)

READY_POLL_S = 0.2
# Lines vLLM (uvicorn) prints the moment it starts listening: probe at once instead of waiting.
_LISTENING_MARKERS = (b"Application startup complete", b"Uvicorn running on")
MEMORY_MARGIN_BYTES = 256 * 1024**2


async def http_get(host: str, port: int, path: str, body: bool = False) -> tuple[str, bytes]:
    """One HTTP/1.0 GET on a fresh connection: (status code, body if asked for).

    Bare asyncio streams: an httpx pool costs ~3x the CPU per request and checks every pooled
    connection on each one, which grows with the number of engines. Raises OSError, or
    ValueError when the answer is not HTTP.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        name = f"[{host}]" if ":" in host else host
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {name}:{port}\r\n\r\n".encode())
        status = (await reader.readline()).split()
        if len(status) < 2 or not status[0].startswith(b"HTTP/"):
            raise ValueError("the answer is not HTTP")
        if not body:
            return status[1].decode(errors="replace"), b""
        # HTTP/1.0: the answer ends where the connection does.
        head, _, data = (b"\r\n" + await reader.read()).partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            data = _dechunk(data)  # uvicorn's httptools server (vLLM's) chunks even for 1.0
        return status[1].decode(errors="replace"), data
    finally:
        writer.close()


def _dechunk(data: bytes) -> bytes:
    """The body of a chunked HTTP answer; ValueError when it is malformed or cut short."""
    out: list[bytes] = []
    at = 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        if end + 2 + size > len(data):
            raise ValueError("chunked body cut short")
        out.append(data[end + 2 : end + 2 + size])
        at = end + 4 + size


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"


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
    """What an engine needs from the supervisor around it."""

    settings: OrchestratorSettings
    slice_lock: Callable[[str], asyncio.Lock]
    slice_memory: Callable[[str], Awaitable[tuple[int, int] | None]]
    track: Callable[[int, Engine | None], None]  # pid -> engine for the reaper; None untracks
    changed: Callable[[], None]  # persist state
    # pids holding GPU memory on a slice, per NVML; None when NVML cannot tell
    slice_pids: Callable[[str], Awaitable[set[int] | None]] | None = None


class _Failure(Exception):
    """This life of the engine ended; `final` means retrying cannot help."""

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final


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
    def __init__(self, spec: EngineSpec, ctx: EngineContext, elog: EngineLog) -> None:
        self.spec = spec
        self.ctx = ctx
        self.log = elog
        self.state = State.STOPPED
        self.desired = "stopped"
        self.reason: str | None = None
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        self.ready_at: float | None = None
        self.proc: _Proc | None = None
        self.lock = asyncio.Lock()  # serializes start/stop/restart of this model
        self._runner: asyncio.Task[None] | None = None
        self._crashes: deque[float] = deque()
        self._backoff = ctx.settings.backoff_initial_s
        self._probe_now = asyncio.Event()
        self._baseline_used: int | None = None
        self._last_pids: set[int] = set()  # the previous life's tree, for the memory wait
        self._stopping = False

    # ----- commands (callers hold self.lock) -----

    async def start(self) -> None:
        self.desired = "running"
        if self._runner is not None and not self._runner.done():
            return
        if self.state is State.FAILED:
            self._crashes.clear()
            self._backoff = self.ctx.settings.backoff_initial_s
        self.reason = None
        self._set(State.STARTING)
        self._runner = asyncio.create_task(self._run(), name=f"engine-{self.spec.name}")

    async def stop(self, desired: str = "stopped") -> None:
        self.desired = desired
        if self.proc is not None:
            self._set(State.STOPPING)
        self._stopping = True
        try:
            runner, self._runner = self._runner, None
            if runner is not None and not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            await self._terminate(self.ctx.settings.stop_grace_s)
        finally:
            self._stopping = False
        self._set(State.STOPPED)
        self.ready_at = None

    async def restart(self, spec: EngineSpec | None = None) -> None:
        await self.stop(desired="running")
        if spec is not None:
            self.spec = spec
        self._crashes.clear()
        self._backoff = self.ctx.settings.backoff_initial_s
        await self.start()

    def set_spec(self, spec: EngineSpec) -> None:
        self.spec = spec

    # ----- status -----

    def uptime(self) -> float | None:
        return None if self.proc is None else time.monotonic() - self.proc.started_mono

    def _set(self, state: State) -> None:
        if state is not self.state:
            log.info("%s: %s -> %s", self.spec.name, self.state.value, state.value)
            self.state = state
            self.ctx.changed()

    # ----- the lifecycle -----

    async def _run(self) -> None:
        s = self.ctx.settings
        while True:
            started = time.monotonic()
            try:
                await self._one_life()
            except _Failure as f:
                self.reason = f.reason
                self.log.note(f.reason)
                if f.final:
                    self._fail(f.reason)
                    return
            if self.ready_at is not None and time.monotonic() - started >= s.stable_after_s:
                self._crashes.clear()
                self._backoff = s.backoff_initial_s
            self.ready_at = None
            now = time.monotonic()
            self._crashes.append(now)
            while self._crashes and now - self._crashes[0] > s.restart_window_s:
                self._crashes.popleft()
            if len(self._crashes) > s.max_restarts:
                self._fail(
                    f"{len(self._crashes)} failures within {s.restart_window_s:g}s; "
                    f"giving up. Last: {self.reason}"
                )
                return
            self._set(State.BACKOFF)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, s.backoff_max_s)
            self.restarts += 1
            self._set(State.STARTING)

    def _fail(self, reason: str) -> None:
        self.reason = reason
        tail = " | ".join(self.log.tail(5))
        log.error("%s failed: %s (last log lines: %s)", self.spec.name, reason, tail)
        self._set(State.FAILED)

    async def _one_life(self) -> None:
        spec = self.spec
        lock = self.ctx.slice_lock(spec.slice.uuid) if spec.slice and spec.shared_slice else None
        # Engines sharing one GPU start one after another: vLLM mis-sizes memory otherwise.
        async with lock if lock is not None else contextlib.nullcontext():
            await self._await_memory_release()
            holder = process.port_holder(spec.host, spec.port)
            if holder is not None:
                raise _Failure(f"port {spec.port} is already in use by {holder}", final=True)
            self._spawn()
            try:
                await self._wait_ready()
            except BaseException as e:
                await self._cleanup(e)
                raise
        self.ready_at = time.monotonic()
        self.reason = None  # what went wrong before stays in last_exit
        self._set(State.READY)
        try:
            await self._watch()
        except BaseException as e:
            await self._cleanup(e)
            raise

    async def _cleanup(self, cause: BaseException) -> None:
        """Take down what is left of a failed engine; say so at once, the tree may take a while."""
        if isinstance(cause, _Failure):
            self.reason = cause.reason
            self._set(State.STOPPING)
        await self._terminate(self.ctx.settings.stop_grace_s)

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
        started = time.monotonic()
        deadline = started + self.ctx.settings.memory_release_timeout_s
        used = first[0]
        if used > limit:
            self.log.note(f"waiting for slice memory to be released ({used >> 20} MiB in use)")
        while used > limit:
            if time.monotonic() >= deadline:
                self.log.note(f"slice still shows {used >> 20} MiB in use; starting anyway")
                return
            await asyncio.sleep(0.5)
            got = await self.ctx.slice_memory(spec.slice.uuid)
            if got is None:
                return
            used = got[0]
        self.log.note(
            f"slice memory released: {used >> 20} MiB in use, idle {self._baseline_used >> 20} "
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
        started = time.monotonic()
        deadline = started + self.ctx.settings.memory_release_timeout_s
        held = sorted(pids & holders)
        if held:
            self.log.note(f"waiting for the previous engine's GPU memory (pids {held}) in NVML")
        while held:
            if time.monotonic() >= deadline:
                self.log.note(f"pids {held} still hold GPU memory; starting anyway")
                return
            await asyncio.sleep(0.25)
            holders = await query(uuid)
            if holders is None:
                return
            held = sorted(pids & holders)
        self.log.note(
            f"previous engine's GPU memory released: none of pids {sorted(pids)} in NVML "
            f"(checked for {time.monotonic() - started:.1f}s)"
        )

    def _spawn(self) -> None:
        spec = self.spec
        try:
            self.log.note(f"starting: {' '.join(spec.launch.argv)}")
            pid, fd = process.spawn(spec.launch.argv, spec.launch.env)
        except (OSError, ValueError) as e:
            raise _Failure(
                f"cannot run engine command {spec.launch.argv[0]!r}: {e}", final=True
            ) from e
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self.proc = _Proc(
            pid=pid,
            fd=fd,
            started=time.time(),
            started_mono=time.monotonic(),
            exited=loop.create_future(),
            log_mark=self.log.count,
            ident=process.ProcessId.of(pid),
        )
        loop.add_reader(fd, self._on_output, self.proc)
        self.ctx.track(pid, self)
        self._set(State.STARTING)
        self.ctx.changed()

    def _read_once(self, proc: _Proc) -> bytes:
        """One non-blocking read into the log; b"" when nothing waits; closes the pipe at EOF."""
        try:
            data = os.read(proc.fd, 65536)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(proc.fd)
            os.close(proc.fd)
            proc.fd = -1
            return b""
        self.log.write(data)
        return data

    def _on_output(self, proc: _Proc) -> None:
        data = self._read_once(proc)
        if data and self.state is State.STARTING and any(m in data for m in _LISTENING_MARKERS):
            self._probe_now.set()

    def _drain(self, proc: _Proc) -> None:
        """Log what the engine already wrote, so its last lines are read before it is judged."""
        while proc.fd >= 0 and self._read_once(proc):
            pass

    def on_exit(self, pid: int, status: int) -> None:
        """Called by the supervisor's reaper the moment the engine's main process exits."""
        proc = self.proc
        if proc is not None and proc.pid == pid and not proc.exited.done():
            proc.exited.set_result(status)

    def _exit_reason(self, proc: _Proc, status: int, during: str) -> str:
        code, sig = process.exit_description(status)
        how = f"killed by signal {signal.Signals(sig).name}" if sig else f"exited with code {code}"
        self._drain(proc)
        why = self.log.error_reason(proc.log_mark)
        self.last_exit = ExitInfo(code=code, signal=sig, at=time.time(), reason=why or how)
        return f"engine {how} {during}" + (f": {why}" if why else "")

    async def _probe(self, timeout: float) -> str | None:
        """None when /health answers 200, else what went wrong."""
        try:
            async with asyncio.timeout(timeout):
                code, _ = await http_get(self.spec.probe_host, self.spec.port, "/health")
        except TimeoutError:
            return f"/health did not answer within {timeout:g}s"
        except OSError as e:
            return f"/health unreachable ({type(e).__name__})"
        except ValueError:
            return "/health closed the connection without an HTTP answer"
        return None if code == "200" else f"/health returned {code}"

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
            if await self._probe(timeout=2.0) is None:
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
        proc.tree = process.descendants(proc.pid)
        failures = 0
        while True:
            done, _ = await asyncio.wait([proc.exited], timeout=s.health_interval_s)
            if done:
                raise _Failure(self._exit_reason(proc, proc.exited.result(), "while serving"))
            probe = asyncio.ensure_future(self._probe(timeout=s.health_timeout_s))
            racing: list[asyncio.Future[Any]] = [proc.exited, probe]
            await asyncio.wait(racing, return_when="FIRST_COMPLETED")
            if not probe.done():
                probe.cancel()
                continue
            problem = probe.result()
            if problem is None:
                if failures:
                    self.reason = None
                    self._set(State.READY)
                failures = 0
                continue
            failures += 1
            self.reason = f"{problem} ({failures}/{s.unhealthy_threshold})"
            self._set(State.UNHEALTHY)
            if failures >= s.unhealthy_threshold:
                self.last_exit = ExitInfo(None, None, time.time(), f"unhealthy: {problem}")
                raise _Failure(f"unhealthy: {problem} {failures} times in a row; restarting")

    async def _terminate(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL what is left after `grace`, then verify the tree is gone."""
        proc = self.proc
        if proc is None:
            return
        why = "stop requested" if self._stopping else "cleaning up after the engine"
        pgid = proc.pid  # session leader: its pid is the group id
        tracked = [*proc.tree, *process.descendants(proc.pid)]
        self._last_pids = {proc.pid, *(t.pid for t in tracked)}
        started = time.monotonic()
        if not proc.exited.done():
            process.signal_group(pgid, signal.SIGTERM)
        process.signal_each(tracked, signal.SIGTERM)
        left = await self._wait_gone(proc, pgid, tracked, grace)
        self._drain(proc)  # the engine's last words come before the daemon's notes
        if left:
            self.log.note(
                f"{why}: still running after {grace:g}s grace, SIGKILL: {process.describe(left)}"
            )
            process.signal_group(pgid, signal.SIGKILL)
            process.signal_each(tracked, signal.SIGKILL)
            left = await self._wait_gone(proc, pgid, tracked, 10.0)
        if left:
            log.error("%s: processes survive SIGKILL: %s", self.spec.name, process.describe(left))
            self.log.note(f"processes survive SIGKILL: {process.describe(left)}")
        else:
            self.log.note(f"{why}: engine tree gone in {time.monotonic() - started:.2f}s")
        self._drain(proc)
        if proc.fd >= 0:  # a survivor still holds the pipe: stop listening anyway
            asyncio.get_running_loop().remove_reader(proc.fd)
            os.close(proc.fd)
            proc.fd = -1
        if not proc.exited.done():
            self.ctx.track(proc.pid, None)
        self.proc = None
        self.ctx.changed()

    async def _wait_gone(
        self, proc: _Proc, pgid: int, tracked: list[process.ProcessId], limit: float
    ) -> list[int]:
        deadline = time.monotonic() + limit
        # The main process's exit comes as an event; only then is the group worth scanning.
        # asyncio.wait, not wait_for: 3.11's wait_for drops a cancel that lands as the future
        # completes, so a stop() racing a crash never ended the runner, which restarted on.
        if not proc.exited.done():
            await asyncio.wait([proc.exited], timeout=limit)
        return await process.wait_gone(pgid, tracked, deadline)
