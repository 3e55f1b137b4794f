"""Other users on the daemon's host, for attacks run as they would be: a student who is not the
daemon's user, and a service user the daemon runs as. Made with setpriv from numeric ids (no
account is added to the host), so the tests need root and skip without it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

STUDENT = 64101
SERVICE = 64102


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("acting as a second user needs root (setpriv --reuid)")


def as_user(uid: int, argv: Sequence[str]) -> list[str]:
    """argv run as uid (its group the same number, no other groups)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]


def run_as(
    uid: int,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> str:
    done = subprocess.run(
        as_user(uid, argv),
        input=input_text,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, f"{argv} as uid {uid}: {done.stderr}"
    return done.stdout


def student_dir(path: Path, mode: int = 0o777) -> Path:
    """A directory a student may write: world-writable, or the student's own."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return path


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder other users can pass through (pytest's tmp_path is root's own 0700 tree)."""
    need_root()
    path = Path(tempfile.mkdtemp(prefix="mig-trust-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
