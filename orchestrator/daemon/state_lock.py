"""One daemon per state_dir: a lock held for the daemon's life, which the kernel drops when the
daemon dies, even by SIGKILL. A second daemon on the same state_dir would otherwise stop the
first one's engines as leftovers, and both would overwrite one state.json."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from orchestrator.trusted_paths import open_own

LOCK_FILE = "daemon.lock"


class StateDirBusy(RuntimeError):
    """Another live daemon holds the state_dir."""


class StateDirLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock, or raise StateDirBusy naming the daemon that holds it."""
        # Close-on-exec (open_own's): an engine that inherited it would keep the lock after the
        # daemon died. Never through a link: the pid written below must land in this file only.
        fd = open_own(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirBusy(
                f"another daemon (pid {holder}) is using state_dir {self.path.parent}; "
                "stop it first, or give this one its own state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
