"""A fake of the OS process operations (orchestrator.engine.process.ProcessOps) for in-process
engine and supervisor tests: spawned "engines" are records with a real output pipe, signals
follow each record's behaviour, and exits are reported like the daemon's SIGCHLD reaper does.

A spawn that passes a channel (pass_fds) is a standby: the fake speaks the launcher's side of the
protocol (orchestrator/inengine/standby_launcher.py) on that socket: "ready" after its imports, then
on a trigger it becomes the engine in the same record; EOF before a trigger ends it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator.engine.process import ProcessId, Tagged
from orchestrator.inengine import standby_launcher as launcher
from orchestrator.inengine import standby_plan


@dataclass
class Behaviour:
    """How the next spawned engines act."""

    ignore_term: bool = False  # a SIGTERM does nothing (SIGKILL still works)
    term_delay: float = 0.0  # seconds from SIGTERM to exit
    children: int = 1  # EngineCore-like processes in its group, which die with the signal
    survives_kill: bool = False  # a process stuck in D state: even SIGKILL does nothing
    exits_after: float | None = None  # the main process exits with code 1 this long after spawn
    last_words: bytes = b""  # what it writes just before that exit
    standby_import_s: float = 0.0  # a standby's imports take this long
    standby_refuses: bool = False  # a standby's imports initialise CUDA: it refuses, exit 3
    standby_mode: str = standby_plan.MODULE  # EXEC: it could not import the engine's module
    rss_bytes: int = 600 << 20


@dataclass
class FakeProc:
    pid: int
    pgid: int
    parent: int | None
    behaviour: Behaviour
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    create_time: float = field(default_factory=time.time)
    write_fd: int = -1  # the engine's stdout and stderr; -1 for children
    alive: bool = True
    status: int | None = None  # wait status once it exited
    reaped: bool = False
    signals: list[signal.Signals] = field(default_factory=list)
    started_as_standby: bool = False
    channel: socket.socket | None = None  # a standby's end of its channel, until it runs
    triggered_argv: list[str] | None = None  # a standby that became an engine: its argv
    fork: bool | None = None  # what its trigger asked
    imported: bool = False  # a standby's imports are done
    uid: int = field(default_factory=os.geteuid)  # whose process it is

    @property
    def is_standby(self) -> bool:
        """Still waiting as a standby (started with a channel, not triggered yet)."""
        return self.started_as_standby and self.triggered_argv is None


def exit_status(code: int | None = None, sig: int | None = None) -> int:
    """A wait status as waitpid returns it."""
    return sig if sig is not None else (code or 0) << 8


class FakeProcesses:
    """ProcessOps over FakeProc records. `on_exit(pid, status)` is called (soon, from the event
    loop, as SIGCHLD would be) when a spawned engine's main process exits."""

    def __init__(self, on_exit: Callable[[int, int], None] | None = None) -> None:
        self.on_exit = on_exit
        self.procs: dict[int, FakeProc] = {}
        self.spawned: list[FakeProc] = []
        self.behaviour = Behaviour()
        self.spawn_error: BaseException | None = None
        self.busy_ports: dict[int, str] = {}
        self.most_alive = 0  # the most engine main processes ever alive at once
        self._pids = itertools.count(40000)

    # ----- what tests do to the fake engines -----

    def engines_alive(self) -> list[FakeProc]:
        """Live engine main processes (a standby counts once triggered)."""
        return [p for p in self.spawned if p.alive and not p.is_standby]

    def standbys_alive(self) -> list[FakeProc]:
        return [p for p in self.spawned if p.alive and p.is_standby]

    def output(self, pid: int, data: bytes) -> None:
        os.write(self.procs[pid].write_fd, data)

    def crash(self, pid: int, code: int | None = 1, sig: int | None = None) -> None:
        """The main process dies; the rest of its group keeps running (as EngineCore outlives a
        SIGKILLed API server)."""
        self._die(self.procs[pid], exit_status(code, sig))

    def close(self) -> None:
        """Close the pipes of engines a test left running."""
        for p in self.procs.values():
            if p.write_fd >= 0:
                os.close(p.write_fd)
                p.write_fd = -1
            self._close_channel(p)

    def group(self, pgid: int) -> list[int]:
        return sorted(p.pid for p in self.procs.values() if p.alive and p.pgid == pgid)

    # ----- ProcessOps -----

    def spawn(
        self, argv: list[str], env: dict[str, str], *, pass_fds: Sequence[int] = ()
    ) -> tuple[int, int]:
        if self.spawn_error is not None:
            raise self.spawn_error
        read_fd, write_fd = os.pipe()
        pid = next(self._pids)
        main = FakeProc(pid, pid, None, self.behaviour, argv, env, write_fd=write_fd)
        self.procs[pid] = main
        self.spawned.append(main)
        if pass_fds:
            # The real child keeps its own copy of the channel; the daemon closes its copy.
            main.started_as_standby = True
            main.channel = socket.socket(fileno=os.dup(pass_fds[0]))
            main.channel.setblocking(False)
            loop = asyncio.get_running_loop()
            loop.add_reader(main.channel.fileno(), self._standby_reads, main)
            loop.call_later(self.behaviour.standby_import_s, self._standby_imported, main)
            return pid, read_fd
        self._engine_runs(main)
        return pid, read_fd

    def _engine_runs(self, main: FakeProc) -> None:
        for _ in range(self.behaviour.children):
            kid = next(self._pids)
            self.procs[kid] = FakeProc(
                kid, main.pid, main.pid, self.behaviour, env=main.env
            )  # as fork does
        self.most_alive = max(self.most_alive, len(self.engines_alive()))
        if self.behaviour.exits_after is not None:
            asyncio.get_running_loop().call_later(self.behaviour.exits_after, self._exit_now, main)

    # ----- a standby: the launcher's side of the channel -----

    def _standby_imported(self, p: FakeProc) -> None:
        if not p.alive:
            return
        p.imported = True
        if p.triggered_argv is not None:  # the trigger came during the imports: run it now
            self._becomes_engine(p)
            return
        if p.behaviour.standby_refuses:
            self._standby_says(p, "refused", reason="importing the engine initialised CUDA")
            self._die(p, exit_status(code=launcher.EXIT_REFUSED))
            return
        os.write(p.write_fd, b"mig-orchestrator standby: ready\n")
        self._standby_says(
            p,
            "ready",
            pid=p.pid,
            mode=p.behaviour.standby_mode,
            target="fakevllm",
            preloaded=["fakevllm"],
            failed=[],
            reason="",
            prepare_s=p.behaviour.standby_import_s,
            rss_bytes=p.behaviour.rss_bytes,
            libcuda_loaded=False,
        )

    def _standby_says(self, p: FakeProc, event: str, **fields: object) -> None:
        msg = {"event": event, "protocol": launcher.PROTOCOL, **fields}
        assert p.channel is not None
        # The daemon may have closed its end after a trigger: the engine runs anyway.
        with contextlib.suppress(OSError):
            p.channel.send(json.dumps(msg).encode() + b"\n")

    def _standby_reads(self, p: FakeProc) -> None:
        assert p.channel is not None
        try:
            data = p.channel.recv(65536)
        except BlockingIOError:
            return
        if not data:  # the daemon let go before a trigger: the launcher exits at once
            self._die(p, exit_status(code=0))
            return
        trigger = json.loads(data.partition(b"\n")[0])
        p.triggered_argv, p.fork = trigger["argv"], trigger["fork"]
        asyncio.get_running_loop().remove_reader(p.channel.fileno())  # reads nothing more
        if p.imported:
            self._becomes_engine(p)

    def _becomes_engine(self, p: FakeProc) -> None:
        assert p.triggered_argv is not None
        p.argv = p.triggered_argv
        self._close_channel(p)
        os.write(p.write_fd, b"mig-orchestrator standby: triggered\n")
        self._engine_runs(p)

    def _close_channel(self, p: FakeProc) -> None:
        if p.channel is not None:
            with contextlib.suppress(RuntimeError):  # no loop: a test's teardown
                asyncio.get_running_loop().remove_reader(p.channel.fileno())
            p.channel.close()
            p.channel = None

    def ident(self, pid: int) -> ProcessId | None:
        p = self.procs.get(pid)
        return ProcessId(pid, p.create_time) if p is not None and p.alive else None

    def alive(self, p: ProcessId) -> bool:
        q = self.procs.get(p.pid)
        return q is not None and q.alive and q.create_time == p.create_time

    def descendants(self, pid: int) -> list[ProcessId]:
        found: list[ProcessId] = []
        todo = [pid]
        while todo:
            parent = todo.pop()
            for p in self.procs.values():
                if p.parent == parent and p.alive:
                    found.append(ProcessId(p.pid, p.create_time))
                    todo.append(p.pid)
        return found

    def signal_group(self, pgid: int, sig: signal.Signals) -> None:
        for p in list(self.procs.values()):
            if p.alive and p.pgid == pgid:
                self._deliver(p, sig)

    def signal_each(self, procs: Iterable[ProcessId], sig: signal.Signals) -> None:
        for p in procs:
            if self.alive(p):
                self._deliver(self.procs[p.pid], sig)

    async def wait_gone(self, pgid: int, tracked: list[ProcessId], deadline: float) -> list[int]:
        while True:
            left = set(self.group(pgid)) | {p.pid for p in tracked if self.alive(p)}
            if not left or time.monotonic() >= deadline:
                return sorted(left)
            await asyncio.sleep(0.002)

    def describe(self, pids: Iterable[int]) -> str:
        return ", ".join(f"{pid} (fake)" for pid in pids)

    def port_holder(self, host: str, port: int) -> str | None:
        return self.busy_ports.get(port)

    def rss_bytes(self, pid: int) -> int | None:
        p = self.procs.get(pid)
        return p.behaviour.rss_bytes if p is not None and p.alive else None

    def reap(self, pids: Iterable[int] | None) -> list[tuple[int, int]]:
        wanted = set(self.procs) if pids is None else set(pids)
        done = []
        for pid in sorted(wanted & set(self.procs)):
            p = self.procs[pid]
            if not p.alive and not p.reaped and p.status is not None:
                p.reaped = True
                done.append((pid, p.status))
        return done

    def owned_group(self, p: ProcessId) -> int | None:
        q = self.procs.get(p.pid)
        return q.pgid if q is not None and self.alive(p) and q.uid == os.geteuid() else None

    def find_by_env(self, name: str, prefix: str) -> list[Tagged]:
        return [
            Tagged(ProcessId(p.pid, p.create_time), p.pgid, p.env[name])
            for p in self.procs.values()
            if p.alive
            and p.uid == os.geteuid()
            and name in p.env
            and p.env[name].startswith(prefix)
        ]

    # ----- behaviour -----

    def _deliver(self, p: FakeProc, sig: signal.Signals) -> None:
        p.signals.append(sig)
        if sig == signal.SIGKILL and not p.behaviour.survives_kill:
            self._die(p, exit_status(sig=signal.SIGKILL))
        elif sig == signal.SIGTERM and not p.behaviour.ignore_term:
            if p.behaviour.term_delay:
                asyncio.get_running_loop().call_later(
                    p.behaviour.term_delay, self._die, p, exit_status(sig=signal.SIGTERM)
                )
            else:
                self._die(p, exit_status(sig=signal.SIGTERM))

    def _exit_now(self, p: FakeProc) -> None:
        if p.alive:
            if p.behaviour.last_words:
                os.write(p.write_fd, p.behaviour.last_words)
            self._die(p, exit_status(code=1))

    def _die(self, p: FakeProc, status: int) -> None:
        if not p.alive:
            return
        p.alive, p.status = False, status
        self._close_channel(p)
        if p.write_fd >= 0:
            os.close(p.write_fd)  # the engine's pipe reaches EOF
            p.write_fd = -1
        if p.parent is None and self.on_exit is not None:
            asyncio.get_running_loop().call_soon(self.on_exit, p.pid, status)
