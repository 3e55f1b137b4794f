"""What the daemon trusts, attacked as a hostile student (a second, unprivileged user) and a
clumsy sysadmin would: the real daemon as a subprocess, stand-in engines, the attacks run as
they were found. No token changes, no foreign process dies, no student code runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.daemon_harness import (
    REPO,
    STANDIN,
    Daemon,
    free_ports,
    group_pids,
    marked_pids,
    standin_model,
    wait_until,
    write_secret,
)
from tests.second_user import STUDENT, as_user, need_root, open_tmp, run_as, student_dir

pytestmark = pytest.mark.slow
__all__ = ["open_tmp"]  # a fixture
ADMIN = "adm-secret-1"


def serve_once(d: Daemon) -> subprocess.CompletedProcess[str]:
    """Run `serve` expecting it to refuse to start (it would otherwise run until the timeout)."""
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve", "--config", str(d.config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
    )
    d.log_path.write_text(done.stdout + done.stderr)
    return done


# ----- state_dir and log_dir: strict modes -----


@pytest.mark.parametrize("where", ["state", "logs"])
def test_a_directory_a_student_can_write_is_refused_and_the_token_survives(
    daemons: Callable[..., Daemon], open_tmp: Path, where: str
) -> None:
    """The attack: daemon.lock (or the engine's log) planted as a link to the admin token."""
    token = write_secret(open_tmp / "admin.token", ADMIN)
    shared = student_dir(open_tmp / where)
    planted = shared / ("daemon.lock" if where == "state" else "m.log")
    run_as(STUDENT, ["ln", "-s", str(token), str(planted)])
    key = "state_dir" if where == "state" else "log_dir"
    (port,) = free_ports(1)
    d = daemons(
        {"m": standin_model(port)},
        orchestrator={"admin_token_file": str(token), key: str(shared)},
        token=ADMIN,
    )
    done = serve_once(d)
    assert done.returncode == 2, done.stderr
    assert f"orchestrator.{key}: {shared} " in done.stderr
    assert "mode 0777" in done.stderr and "writable by every user" in done.stderr
    assert token.read_text() == ADMIN


def test_a_reload_to_a_directory_others_can_write_is_refused(
    daemons: Callable[..., Daemon], open_tmp: Path
) -> None:
    (port,) = free_ports(1)
    d = daemons({"m": standin_model(port, autostart=False)})
    d.start()
    theirs = open_tmp / "student-logs"  # made by the student: theirs, 0755
    theirs.mkdir(mode=0o755)
    os.chown(theirs, STUDENT, STUDENT)
    d.orchestrator["log_dir"] = str(theirs)
    d.write_config()
    r = d.post("/api/v1/reload")
    assert r.status_code == 422, r.text
    assert f"orchestrator.log_dir: {theirs} (owner uid {STUDENT}" in r.json()["error"]
    assert "belongs to another user" in r.json()["error"]
    assert list(theirs.iterdir()) == []


# ----- engines never run code from the daemon's working directory -----

EVIL = """
import os, pathlib, sys
pathlib.Path(os.environ["PROOF"]).write_text(f"student code ran as uid {os.getuid()}")
sys.exit(3)
"""


@pytest.mark.parametrize("standby", [False, True])
def test_an_engine_never_imports_from_the_daemons_working_directory(
    daemons: Callable[..., Daemon], open_tmp: Path, standby: bool
) -> None:
    """`serve` run by hand in a folder a student can write; the engine command is `python -m`,
    which puts the working directory first on sys.path."""
    cwd = student_dir(open_tmp / "shared-cwd")
    proof = open_tmp / "proof"
    # The student shadows the engine's module (a stand-in here, vllm in real life).
    run_as(STUDENT, ["sh", "-c", f"cat > {cwd}/standin_engine.py"], input_text=EVIL)
    (port,) = free_ports(1)
    env = {"PYTHONPATH": str(STANDIN.parent), "PROOF": str(proof)}
    d = daemons(
        {"m": standin_model(port, env=env)},
        orchestrator={
            "engine_command": [sys.executable, "-m", "standin_engine"],
            "standby": standby,
        },
        cwd=cwd,
    )
    d.start(wait_ready=["m"])
    if standby:
        d.post("/api/v1/models/m/restart")  # the second life comes from the standby
        wait_until(lambda: "starting from standby" in "\n".join(logs(d)), 30, "a standby start")
        d.wait_state("m", "ready")
    assert not proof.exists(), proof.read_text()
    engine = d.status("m")["pid"]
    assert Path(f"/proc/{engine}/cwd").resolve() == (d.root / "state" / "engine-cwd").resolve()


def logs(d: Daemon) -> list[str]:
    return list(d.get("/api/v1/models/m/logs?tail=200").json()["lines"])


# ----- a damaged state.json -----

DEEP = "[" * 1001 + "]" * 1001
NESTED = "[" * 20 + "]" * 20
DAMAGE: dict[str, Callable[[int, float], dict[str, object]]] = {
    "pid as text": lambda pid, t: {"engines": {"m": rec(str(pid), pid, t)}},
    "pgid as text": lambda pid, t: {"engines": {"m": rec(pid, "x", t)}},
    "create_time as text": lambda pid, t: {"engines": {"m": rec(pid, pid, "x")}},
    "negative pid": lambda pid, t: {"standbys": {"m": rec(-5, pid, t)}},
    "overrides 20 deep": lambda pid, t: {"overrides": {"m": {"env": NESTED}}},
}


def rec(pid: object, pgid: object, create_time: object) -> dict[str, object]:
    return {"pid": pid, "pgid": pgid, "create_time": create_time, "slice_uuid": None}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_the_daemon_starts_with_a_damaged_state_file_and_keeps_what_is_sound(
    daemons: Callable[..., Daemon], damage: str
) -> None:
    """The damaged record names a live process (as the attack's did: pid 302 was alive)."""
    (port,) = free_ports(1)
    d = daemons({"m": standin_model(port, autostart=False)})
    state = d.root / "state"
    state.mkdir(mode=0o750)
    live = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        made = DAMAGE[damage](live.pid, psutil.Process(live.pid).create_time())
        # The nesting itself, not a string holding brackets.
        text = json.dumps({"desired": {"m": "running"}, **made}).replace(f'"{NESTED}"', NESTED)
        (state / "state.json").write_text(text)
        d.start(wait_ready=["m"])  # desired running, as saved: started though autostart is off
        assert live.poll() is None  # a damaged record stops nothing
    finally:
        live.kill()
        live.wait()
    [side] = state.glob("state.json.rejected-*")
    assert stat_mode(side) == 0o600
    assert "set aside" in d.log() and str(side) in d.log()
    assert list(json.loads(side.read_text())) == [f"{next(iter(made))}.m"]
    d.terminate()
    saved = json.loads((state / "state.json").read_text())
    assert saved["desired"] == {"m": "running"} and saved["engines"] == {}


def test_the_daemon_starts_with_a_state_file_nested_past_what_json_parses(
    daemons: Callable[..., Daemon],
) -> None:
    """Arrays 1,001 deep: Python's json gives up (RecursionError): the file is set aside whole."""
    (port,) = free_ports(1)
    d = daemons({"m": standin_model(port, autostart=False)})
    state = d.root / "state"
    state.mkdir(mode=0o750)
    text = f'{{"desired": {{"m": "running"}}, "overrides": {{"m": {{"env": {DEEP}}}}}}}'
    (state / "state.json").write_text(text)
    d.start()
    [side] = state.glob("state.json.rejected-*")
    assert side.read_text() == text and stat_mode(side) == 0o600
    assert "starting without saved state" in d.log()
    assert d.status("m")["state"] == "stopped"


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


# ----- the leftover scan -----


@pytest.fixture
def student_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def student_sleep(env: dict[str, str], procs: list[subprocess.Popen[bytes]]) -> int:
    """A student's process leading its own group, with a child in it."""
    p = subprocess.Popen(
        as_user(STUDENT, ["sh", "-c", "sleep 300 & wait"]), env=env, start_new_session=True
    )
    procs.append(p)
    wait_until(lambda: len(group_pids(p.pid)) == 2, 10, "the student's processes")
    return p.pid


def test_a_forged_mark_or_record_gets_no_foreign_process_killed(
    daemons: Callable[..., Daemon], student_procs: list[subprocess.Popen[bytes]]
) -> None:
    """A root daemon, a student's processes: one carrying the mark as its text was (the state_dir's
    real path), one named by a state.json record (pid and start time), and one whose group a
    record names beside a pid of the daemon's user."""
    need_root()
    (port,) = free_ports(1)
    d = daemons({"m": standin_model(port, autostart=False)})
    state = d.root / "state"
    state.mkdir(mode=0o750)
    forged = {**os.environ, "MIG_ORCH_ENGINE": f"{os.path.realpath(state)}:m", "SPT_NOENV": "1"}
    marked = student_sleep(forged, student_procs)
    recorded = student_sleep(dict(os.environ), student_procs)
    grouped = student_sleep(dict(os.environ), student_procs)
    mine = subprocess.Popen(["sleep", "300"], start_new_session=True)  # root's, like the daemon
    try:
        records = {
            "m": record(recorded, recorded),
            "n": record(mine.pid, grouped),  # the recorded group is the student's
        }
        (state / "state.json").write_text(json.dumps({"engines": records}))
        d.start()
        students = [marked, recorded, grouped]
        assert all(len(group_pids(g)) == 2 for g in students), d.log()
        assert "not stopped" in d.log()
    finally:
        mine.kill()
        mine.wait()


def record(pid: int, pgid: int) -> dict[str, object]:
    return {
        "pid": pid,
        "pgid": pgid,
        "create_time": psutil.Process(pid).create_time(),
        "slice_uuid": None,
    }


# ----- a command that cannot be saved -----


def test_a_command_that_cannot_be_saved_is_503_with_the_reason_and_changes_nothing(
    open_tmp: Path,
) -> None:
    """The daemon as a service user, its state_dir made read-only to it while it runs."""
    from tests.second_user import SERVICE

    root = open_tmp / "d"
    root.mkdir()
    for sub in ("state", "logs"):
        (root / sub).mkdir(mode=0o750)
        os.chown(root / sub, SERVICE, SERVICE)
    (port,) = free_ports(1)
    # The stand-in needs the standard library only: an interpreter outside root's home, which
    # the service user cannot enter (the daemon's own venv may link into it).
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    d = Daemon(
        root,
        {"m": standin_model(port)},
        orchestrator={"engine_command": [python, str(STANDIN)]},
        wrapper=as_user(SERVICE, []),
        env={"HOME": str(root)},
    )
    try:
        d.start(wait_ready=["m"])
        pid = d.status("m")["pid"]
        saved = (root / "state" / "state.json").read_text()
        (root / "state").chmod(0o500)
        asked = {"overrides": {"max_num_seqs": 4}}
        for verb, body in [("stop", None), ("restart", None), ("restart", asked), ("start", None)]:
            r = d.post(f"/api/v1/models/m/{verb}", json=body)
            assert r.status_code == 503, r.text
            assert "nothing was changed" in r.json()["error"]
            assert "Permission denied" in r.json()["error"], r.json()
            time.sleep(0.3)
            s = d.status("m")
            assert (s["state"], s["desired"], s["pid"], s["overrides"]) == (
                "ready",
                "running",
                pid,
                {},
            )
        assert (root / "state" / "state.json").read_text() == saved
        (root / "state").chmod(0o750)
        assert d.post("/api/v1/models/m/stop").status_code == 202
        d.wait_state("m", "stopped")
        assert json.loads((root / "state" / "state.json").read_text())["desired"] == {
            "m": "stopped"
        }
    finally:
        (root / "state").chmod(0o750)
        if d.proc is not None and d.proc.poll() is None:
            d.terminate()
        for leftover in marked_pids(root):
            os.kill(leftover, signal.SIGKILL)
