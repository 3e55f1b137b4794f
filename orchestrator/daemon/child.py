"""`serve` as a child process (the demo, the practicum, tests): start it with its output in a log
file, and wait until its control plane answers or it exits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

POLL_S = 0.2


class DaemonExited(RuntimeError):
    """The daemon exited before its control plane answered; the message ends with its log."""


def spawn(
    config: Path,
    log_path: Path,
    *,
    python: str = sys.executable,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    preexec_fn: Callable[[], None] | None = None,
    wrapper: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Run `[WRAPPER] python -m orchestrator serve --config CONFIG ARGS` (a wrapper such as
    setpriv runs it as another user), appending its output to log_path."""
    # This process's NOTIFY_SOCKET is not the child's to use: the child is not the unit.
    inherited = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    child_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [*wrapper, python, "-m", "orchestrator", "serve", "--config", str(config), *args],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=new_session,
            preexec_fn=preexec_fn,
        )


def wait_until_up(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 60.0
) -> None:
    """Poll GET /healthz until it answers 200. DaemonExited if the daemon exits first,
    TimeoutError when it has not answered within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise DaemonExited(f"the daemon exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"the daemon's control plane at {url} did not answer in {timeout:g}s"
            )
        time.sleep(POLL_S)
