"""How a restarted daemon knows its engines' processes, on real processes: the mark in their
environment (found by one /proc scan), and the lock that keeps a second daemon off a state_dir."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.daemon.state_lock import StateDirBusy, StateDirLock
from orchestrator.engine import marker, process
from orchestrator.tooling import cpu_venv

# A server that forks an "EngineCore" and names it with setproctitle when it can, as vLLM does.
ENGINE = """
import os, signal
if os.fork() == 0:
    try:
        import setproctitle
        setproctitle.setproctitle("VLLM::EngineCore")
    except ImportError:
        pass
else:
    print("forked", flush=True)
while True:
    signal.pause()
"""


@pytest.fixture
def groups() -> Iterator[list[int]]:
    started: list[int] = []
    yield started
    for pgid in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def engine(python: str, env: dict[str, str], groups: list[int]) -> tuple[int, int]:
    """(pid of the server, pid of its EngineCore), both running."""
    proc = subprocess.Popen(
        [python, "-c", ENGINE], env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    groups.append(proc.pid)
    assert proc.stdout is not None and proc.stdout.readline() == b"forked\n"
    kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return proc.pid, int(kids[0])


def test_the_scan_finds_every_process_of_a_marked_tree_and_nothing_else(
    tmp_path: Path, groups: list[int]
) -> None:
    dirs = [tmp_path / name for name in ("state", "other", "state:x")]
    for d in dirs:
        d.mkdir()
    mark, *others = [marker.DaemonMark.load(d) for d in dirs]
    server, core = engine(sys.executable, {**os.environ, **mark.env("a")}, groups)
    for other in others:  # other daemons', one with a path that starts like ours
        engine(sys.executable, {**os.environ, **other.env("a")}, groups)

    def ours() -> list[tuple[int, int, str]]:
        scanned = process.find_by_env(marker.ENV, mark.prefix)
        assert all(t.proc == process.ProcessId.of(t.proc.pid) for t in scanned)
        return sorted((t.proc.pid, t.pgid, t.value) for t in scanned if mark.model_of(t.value))

    assert ours() == [(server, server, f"{mark.tag}:a"), (core, server, f"{mark.tag}:a")]
    os.kill(server, signal.SIGKILL)  # an orphaned EngineCore is still found
    deadline = time.monotonic() + 5
    while len(ours()) > 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert ours() == [(core, server, f"{mark.tag}:a")]


def test_the_mark_survives_vllms_setproctitle(tmp_path: Path, groups: list[int]) -> None:
    """setproctitle overwrites /proc/PID/environ unless SPT_NOENV, which every mark sets."""
    python = cpu_venv.default_venv() / "bin" / "python"
    if not python.exists():
        pytest.skip("no vLLM engine venv, whose setproctitle this checks")
    mark = marker.DaemonMark.load(tmp_path)
    ours = mark.env("alice")
    for env, kept in ((ours, True), ({marker.ENV: ours[marker.ENV]}, False)):
        _, core = engine(str(python), {**os.environ, **env}, groups)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{core}/comm").read_text().strip() != "VLLM::EngineCor":
            assert time.monotonic() < deadline, "setproctitle never renamed the EngineCore"
            time.sleep(0.01)
        found = [t.proc.pid for t in process.find_by_env(marker.ENV, mark.prefix)]
        assert (core in found) is kept


def test_one_daemon_per_state_dir_until_the_holder_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from orchestrator.daemon.state_lock import StateDirLock\n"
            "StateDirLock(Path(sys.argv[1])).acquire()\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(StateDirBusy, match=rf"another daemon \(pid {holder.pid}\).*{tmp_path}"):
            StateDirLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no chance to release anything itself
        holder.wait()
    lock = StateDirLock(tmp_path)
    lock.acquire()
    with pytest.raises(StateDirBusy, match=rf"pid {os.getpid()}"):
        StateDirLock(tmp_path).acquire()  # one process, two daemons: refused too
    lock.release()
    again = StateDirLock(tmp_path)
    again.acquire()
    again.release()
