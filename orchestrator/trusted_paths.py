"""The daemon's own directories (state_dir, log_dir) and the files it writes there.

A directory that another user can write lets that user swap any name in it for a link to a file
the daemon may write (the admin token), or plant a file the daemon reads. So, as sshd's
StrictModes do for ~/.ssh, such a directory is refused, and every file the daemon opens there
is opened without following a symbolic link and checked to be a plain file of its own.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UntrustedFile(OSError):
    """A name in the daemon's directories is not the daemon's own file or directory."""


def dir_problem(path: Path, what: str) -> str | None:
    """Why `path` may not hold the daemon's files, or None: it must be a directory owned by the
    daemon's user or root that no other user can write (its own primary group may)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{what}: {path}: {e.strerror or e}"
    mode = stat.S_IMODE(st.st_mode)
    shown = f"{what}: {path} (owner uid {st.st_uid}, group gid {st.st_gid}, mode {mode:04o})"
    me = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        return f"{shown} is not a directory"
    if st.st_uid not in (me, 0):
        return f"{shown} belongs to another user; give it to uid {me} (chown)"
    if mode & stat.S_IWOTH:
        return f"{shown} is writable by every user; chmod o-w it"
    # Kubernetes' fsGroup makes a volume group-writable by the pod's own group: that is ours.
    if mode & stat.S_IWGRP and st.st_gid != os.getegid():
        return f"{shown} is writable by group {st.st_gid}, not the daemon's own; chmod g-w it"
    return None


def ensure_dir(path: Path, what: str) -> str | None:
    """Create `path` if missing (0750), then say what is wrong with it as dir_problem does."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as e:
        return f"{what}: cannot create {path}: {e.strerror or e}"
    return dir_problem(path, what)


def private_subdir(path: Path) -> Path:
    """A directory only the daemon's user may use, made inside one that passed dir_problem."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise UntrustedFile(f"{path} is not a directory of uid {os.geteuid()} (a link?): refused")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def open_own(path: Path, flags: int, mode: int = 0o600) -> int:
    """os.open that never follows a link at `path`, and accepts only a plain file of the daemon's
    user that no other name shares (a hard link to the admin token is refused too)."""
    fd = os.open(path, flags | _NOFOLLOW, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            raise UntrustedFile(
                f"{path} is not a plain file of uid {os.geteuid()} with one name "
                f"(owner {st.st_uid}, {st.st_nlink} links): refused"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file that must not exist yet (O_EXCL): a name planted there makes it fail."""
    fd = open_own(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may stop short
        view = view[os.write(fd, view) :]


def read_own(path: Path, limit: int) -> bytes:
    """Up to limit + 1 bytes of a file of the daemon's, never through a link."""
    fd = open_own(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit + 1)


def replace_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to a fresh temporary beside `path`, fsync it, rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_new(tmp, data, mode)
    except FileExistsError:
        # Left by a crash (or planted): unlink removes the name, never what a link points at.
        tmp.unlink()
        write_new(tmp, data, mode)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
