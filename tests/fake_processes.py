"""A fake of the OS process operations (orchestrator.engine.process.ProcessOps) for in-process
engine and supervisor tests: spawned "engines" are records with a real output pipe, signals
follow each record's behaviour, and exits are reported like the daemon's SIGCHLD reaper does."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from orchestrator.engine.process import ProcessId, Tagged


@dataclass
class Behaviour:
    """How the next spawned engines act."""

    ignore_term: bool = False  # a SIGTERM does nothing (SIGKILL still works)
    term_delay: float = 0.0  # seconds from SIGTERM to exit
    children: int = 1  # EngineCore-like processes in its group, which die with the signal
    survives_kill: bool = False  # a process stuck in D state: even SIGKILL does nothing
    exits_after: float | None = None  # the main process exits with code 1 this long after spawn
    last_words: bytes = b""  # what it writes just before that exit


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
        return [p for p in self.spawned if p.alive]

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

    def group(self, pgid: int) -> list[int]:
        return sorted(p.pid for p in self.procs.values() if p.alive and p.pgid == pgid)

    # ----- ProcessOps -----

    def spawn(self, argv: list[str], env: dict[str, str]) -> tuple[int, int]:
        if self.spawn_error is not None:
            raise self.spawn_error
        read_fd, write_fd = os.pipe()
        pid = next(self._pids)
        main = FakeProc(pid, pid, None, self.behaviour, argv, env, write_fd=write_fd)
        self.procs[pid] = main
        self.spawned.append(main)
        for _ in range(self.behaviour.children):
            kid = next(self._pids)
            self.procs[kid] = FakeProc(kid, pid, pid, self.behaviour, env=env)  # as fork does
        self.most_alive = max(self.most_alive, len(self.engines_alive()))
        if self.behaviour.exits_after is not None:
            asyncio.get_running_loop().call_later(self.behaviour.exits_after, self._exit_now, main)
        return pid, read_fd

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

    def reap(self, pids: Iterable[int] | None) -> list[tuple[int, int]]:
        wanted = set(self.procs) if pids is None else set(pids)
        done = []
        for pid in sorted(wanted & set(self.procs)):
            p = self.procs[pid]
            if not p.alive and not p.reaped and p.status is not None:
                p.reaped = True
                done.append((pid, p.status))
        return done

    def find_by_env(self, name: str, prefix: str) -> list[Tagged]:
        return [
            Tagged(ProcessId(p.pid, p.create_time), p.pgid, p.env[name])
            for p in self.procs.values()
            if p.alive and name in p.env and p.env[name].startswith(prefix)
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
        if p.write_fd >= 0:
            os.close(p.write_fd)  # the engine's pipe reaches EOF
            p.write_fd = -1
        if p.parent is None and self.on_exit is not None:
            asyncio.get_running_loop().call_soon(self.on_exit, p.pid, status)
