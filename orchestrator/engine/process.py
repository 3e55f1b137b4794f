"""OS process plumbing: spawn in a new process group, find a whole engine tree, kill it, reap."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

log = logging.getLogger(__name__)
_PR_SET_CHILD_SUBREAPER = 36
# With CONFIG_PROC_CHILDREN each thread lists its children, so a tree is a few small reads
# instead of a scan of every process's stat (tens of ms with hundreds of processes).
_CHILDREN_LISTS = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


@dataclass(frozen=True)
class ProcessId:
    """A pid plus its start time, so that a recycled pid is never mistaken for ours."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except (psutil.Error, ValueError):  # ValueError: not a pid at all (0, negative)
            return None

    def alive(self) -> bool:
        try:
            p = psutil.Process(self.pid)
            return abs(p.create_time() - self.create_time) < 0.05 and p.status() != "zombie"
        except (psutil.Error, ValueError, TypeError):  # a damaged record is no live process
            return False


@dataclass(frozen=True)
class Tagged:
    """A live process whose environment holds a variable, with that variable's value."""

    proc: ProcessId
    pgid: int
    value: str


def _stat_fields(pid: int | str) -> list[bytes]:
    """/proc/PID/stat after the parenthesised command: state ppid pgrp ... (OSError once gone)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rfind(b")") + 2 :].split()


def _runs_as_me(pid: int | str) -> bool:
    """Real and effective uid are this daemon's: what another user started is never ours, even
    when root can read it (a setuid program a student runs has the student's real uid)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    real, effective = map(int, line.split()[1:3])
                    return real == effective == os.geteuid()
    except (OSError, ValueError):
        pass
    return False


def owned_group(p: ProcessId) -> int | None:
    """The process group p is in now, read from /proc, when p is alive and runs as this daemon's
    user; else None. A record's group is never trusted: this is the one signals go to."""
    try:
        fields = _stat_fields(p.pid)
    except (OSError, TypeError, ValueError):
        return None
    if fields[0] == b"Z" or not p.alive() or not _runs_as_me(p.pid):
        return None
    return int(fields[2])


def find_by_env(name: str, prefix: str) -> list[Tagged]:
    """Other live processes of this daemon's user whose environment holds `name` with a value
    starting with `prefix`: one scan of /proc/*/environ, which keeps what the process was started
    with whatever it does later. Processes of other users and zombies are skipped."""
    needle = f"\0{name}={prefix}".encode()
    found = []
    me = str(os.getpid())
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or entry.name == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = b"\0" + f.read()
            at = env.find(needle)
            if at < 0 or not _runs_as_me(entry.name):
                continue
            rest = _stat_fields(entry.name)
        except OSError:
            continue
        ident = None if rest[0] == b"Z" else ProcessId.of(int(entry.name))
        if ident is None:
            continue
        end = env.find(b"\0", at + 1)
        value = env[at + len(name) + 2 : end if end >= 0 else len(env)]
        found.append(Tagged(ident, int(rest[2]), value.decode(errors="replace")))
    return found


def become_subreaper() -> bool:
    """Orphaned engine processes (vLLM's EngineCore) then reparent to us and can be reaped."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def spawn(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, pass_fds: Sequence[int] = ()
) -> tuple[int, int]:
    """Start argv as the leader of a new session; return (pid, fd of its merged stdout/stderr).

    pass_fds stay open in the child under the same numbers (a standby's trigger channel).
    """
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    # The supervisor's reaper owns waiting; mark the Popen done so it never reaps behind our back.
    proc.returncode = 0
    return proc.pid, read_fd


def read_output(fd: int) -> bytes | None:
    """One non-blocking read of a process's output pipe: None when nothing waits; b"" at its
    end, after which the pipe is no longer watched and is closed."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        data = b""
    if not data:
        close_output(fd)
    return data


def close_output(fd: int) -> None:
    """Stop watching an output pipe (event loop reader) and close it."""
    asyncio.get_running_loop().remove_reader(fd)
    os.close(fd)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid, read from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            rest = _stat_fields(entry.name)
        except OSError:
            continue
        if len(rest) > 2 and rest[0] != b"Z" and int(rest[2]) == pgid:
            found.append(int(entry.name))
    return found


def _child_pids(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids += map(int, f.read().split())
        except OSError:
            continue
    return kids


def descendants(pid: int) -> list[ProcessId]:
    if _CHILDREN_LISTS:
        pids: list[int] = []
        todo = [pid]
        while todo:
            kids = _child_pids(todo.pop())
            pids += kids
            todo += kids
    else:
        try:
            pids = [k.pid for k in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    return [p for p in map(ProcessId.of, pids) if p is not None]


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def signal_each(procs: Iterable[ProcessId], sig: signal.Signals) -> None:
    for p in procs:
        if p.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, sig)


def group_exists(pgid: int) -> bool:
    """Whether any process, zombies included, is in group pgid: one syscall, no /proc scan."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def any_left(pgid: int, tracked: Iterable[ProcessId]) -> bool:
    """Cheap check: False means the whole tree is gone; an unreaped zombie still counts."""
    return group_exists(pgid) or any(p.alive() for p in tracked)


def survivors(pgid: int, tracked: Iterable[ProcessId]) -> list[int]:
    """Every process of the engine tree still running: its group plus descendants that left it."""
    left = set(group_members(pgid)) if group_exists(pgid) else set()
    left.update(p.pid for p in tracked if p.alive())
    return sorted(left)


async def wait_gone(pgid: int, tracked: list[ProcessId], deadline: float) -> list[int]:
    """Wait until the tree is gone or time.monotonic() passes deadline; return what is left."""
    delay = 0.001  # a check costs one kill(0): look again soon, the tree is usually gone
    scanned = time.monotonic()
    while True:
        # kill(0) on the group is one syscall; the /proc scan that tells zombies apart runs
        # once a second at most: 56 engines scanning every few ms saturated the daemon.
        if not any_left(pgid, tracked):
            return []
        now = time.monotonic()
        if now >= deadline or now - scanned >= 1.0:
            scanned = now
            left = survivors(pgid, tracked)
            if not left or now >= deadline:
                return left
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


def rss_bytes(pid: int) -> int | None:
    """Resident host memory of one process, None once it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def describe(pids: Iterable[int]) -> str:
    parts = []
    for pid in pids:
        try:
            parts.append(f"{pid} ({psutil.Process(pid).name()})")
        except psutil.Error:
            parts.append(str(pid))
    return ", ".join(parts)


def reap(pids: Iterable[int] | None) -> list[tuple[int, int]]:
    """Collect exited children without blocking: the given pids, or any child when None."""
    done: list[tuple[int, int]] = []
    if pids is None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            done.append((pid, status))
        return done
    for pid in list(pids):
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if got:
            done.append((got, status))
    return done


def exit_description(status: int) -> tuple[int | None, int | None]:
    """(exit code, signal number) from a wait status."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


def port_holder(host: str, port: int) -> str | None:
    """Return a description of who listens on port, or None when it can be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return None
        except OSError:
            pass
    try:
        for c in psutil.net_connections(kind="inet"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                return f"pid {describe([c.pid])}"
    except (psutil.Error, OSError):
        pass
    return "another process"


class ProcessOps(Protocol):
    """What engines and the supervisor ask of the OS: the real one is OsProcesses; unit tests pass
    a fake, so that races (stop vs crash, restart storms) run in-process without real engines."""

    def spawn(
        self, argv: list[str], env: dict[str, str], *, pass_fds: Sequence[int] = ()
    ) -> tuple[int, int]: ...
    def ident(self, pid: int) -> ProcessId | None: ...
    def alive(self, p: ProcessId) -> bool: ...
    def descendants(self, pid: int) -> list[ProcessId]: ...
    def signal_group(self, pgid: int, sig: signal.Signals) -> None: ...
    def signal_each(self, procs: Iterable[ProcessId], sig: signal.Signals) -> None: ...
    async def wait_gone(
        self, pgid: int, tracked: list[ProcessId], deadline: float
    ) -> list[int]: ...
    def describe(self, pids: Iterable[int]) -> str: ...
    def port_holder(self, host: str, port: int) -> str | None: ...
    def reap(self, pids: Iterable[int] | None) -> list[tuple[int, int]]: ...
    def rss_bytes(self, pid: int) -> int | None: ...
    def find_by_env(self, name: str, prefix: str) -> list[Tagged]: ...
    def owned_group(self, p: ProcessId) -> int | None: ...


class OsProcesses:
    """The real ProcessOps: this module's functions. Engines start in `cwd`, a directory of the
    daemon's own, never the caller's: `python -m` puts the working directory first on sys.path."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def spawn(
        self, argv: list[str], env: dict[str, str], *, pass_fds: Sequence[int] = ()
    ) -> tuple[int, int]:
        return spawn(argv, env, self.cwd, pass_fds)

    ident = staticmethod(ProcessId.of)
    alive = staticmethod(ProcessId.alive)
    descendants = staticmethod(descendants)
    signal_group = staticmethod(signal_group)
    signal_each = staticmethod(signal_each)
    wait_gone = staticmethod(wait_gone)
    describe = staticmethod(describe)
    port_holder = staticmethod(port_holder)
    reap = staticmethod(reap)
    rss_bytes = staticmethod(rss_bytes)
    find_by_env = staticmethod(find_by_env)
    owned_group = staticmethod(owned_group)
