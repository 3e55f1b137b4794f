"""Files the daemon writes in state_dir and log_dir, attacked by a student who can write there:
a link planted at each name the daemon writes must never let it write through to the admin
token. And the directories themselves, judged as sshd's StrictModes judge ~/.ssh."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.daemon.state_lock import LOCK_FILE, StateDirLock
from orchestrator.engine.logfile import EngineLog
from orchestrator.supervisor.store import STATE_FILE, DaemonState, StateStore
from tests.second_user import STUDENT, need_root, open_tmp, run_as, student_dir

__all__ = ["open_tmp"]  # a fixture
TOKEN = "adm-secret-token-1\n"


@pytest.fixture
def planted(open_tmp: Path) -> tuple[Path, Path]:
    """(a 0777 state_dir, the admin token beside it, 0600 root's) as the attack found them."""
    token = open_tmp / "admin.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    return student_dir(open_tmp / "state"), token


def plant_link(directory: Path, name: str, target: Path) -> Path:
    """The student links `name` in the daemon's directory to `target`."""
    run_as(STUDENT, ["ln", "-s", str(target), str(directory / name)])
    link = directory / name
    assert link.is_symlink() and link.lstat().st_uid == STUDENT
    return link


def test_a_lock_planted_as_a_link_to_the_token_is_refused_and_the_token_kept(
    planted: tuple[Path, Path],
) -> None:
    state, token = planted
    plant_link(state, LOCK_FILE, token)
    with pytest.raises(OSError):
        StateDirLock(state).acquire()
    assert token.read_text() == TOKEN


def test_a_state_temporary_planted_as_a_link_is_replaced_not_written_through(
    planted: tuple[Path, Path],
) -> None:
    state, token = planted
    link = plant_link(state, f".{STATE_FILE}.tmp", token)
    StateStore(state).save(DaemonState(desired={"alice": "running"}))
    assert token.read_text() == TOKEN
    assert not link.exists() and StateStore(state).load() == DaemonState(
        desired={"alice": "running"}
    )


def test_a_state_file_planted_as_a_link_is_not_read(planted: tuple[Path, Path]) -> None:
    state, _ = planted
    forged = state / "student-state.json"
    run_as(STUDENT, ["sh", "-c", f'echo \'{{"desired": {{"x": "running"}}}}\' > {forged}'])
    plant_link(state, STATE_FILE, forged)
    assert StateStore(state).load() == DaemonState()


def test_an_engine_log_planted_as_a_link_is_refused_and_the_token_kept(
    planted: tuple[Path, Path],
) -> None:
    logs, token = planted
    plant_link(logs, "alice.log", token)
    with pytest.raises(OSError, match=r"alice\.log"):
        EngineLog(logs / "alice.log", 1 << 20, 2).write(b"engine output\n")
    assert token.read_text() == TOKEN


def test_the_mark_key_planted_by_a_student_is_refused(planted: tuple[Path, Path]) -> None:
    from orchestrator.engine.marker import KEY_FILE, DaemonMark

    state, _ = planted
    run_as(STUDENT, ["sh", "-c", f"printf %064d 0 > {state / KEY_FILE}"])
    with pytest.raises(OSError, match=KEY_FILE):
        DaemonMark.load(state)


def test_a_hard_link_to_the_token_is_refused(tmp_path: Path) -> None:
    """A clumsy admin's (students cannot: fs.protected_hardlinks)."""
    token = tmp_path / "admin.token"
    token.write_text(TOKEN)
    os.link(token, tmp_path / LOCK_FILE)
    with pytest.raises(OSError, match="2 links"):
        StateDirLock(tmp_path).acquire()
    assert token.read_text() == TOKEN


def test_the_files_made_are_plain_private_files(tmp_path: Path) -> None:
    from orchestrator.engine.marker import KEY_FILE, DaemonMark
    from orchestrator.trusted_paths import open_own

    lock = StateDirLock(tmp_path)
    lock.acquire()
    DaemonMark.load(tmp_path)
    lock.release()
    for name in (LOCK_FILE, KEY_FILE):
        st = (tmp_path / name).lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, name
    fd = open_own(tmp_path / KEY_FILE, os.O_RDONLY)
    os.close(fd)


# ----- strict modes: the directories themselves -----


def dir_problem(path: Path, what: str) -> str | None:
    from orchestrator.trusted_paths import dir_problem

    return dir_problem(path, what)


def mode_dir(parent: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    d = parent / f"d{mode:o}-{uid}-{gid}"
    d.mkdir()
    os.chown(d, uid, gid)
    d.chmod(mode)
    return d


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755, 0o1755])
def test_a_directory_of_the_daemon_writable_by_none_else_is_accepted(
    tmp_path: Path, mode: int
) -> None:
    need_root()
    assert dir_problem(mode_dir(tmp_path, mode), "state_dir") is None


def test_group_writable_by_the_daemons_own_group_is_accepted(tmp_path: Path) -> None:
    """Kubernetes' fsGroup: the volume is the pod's group's, group-writable."""
    need_root()
    assert dir_problem(mode_dir(tmp_path, 0o2770, gid=os.getegid()), "state_dir") is None


@pytest.mark.parametrize(
    ("mode", "uid", "gid", "says"),
    [
        (0o777, 0, 0, "writable by every user"),
        (0o1777, 0, 0, "writable by every user"),  # /tmp's: sticky does not help a link
        (0o770, 0, STUDENT, f"writable by group {STUDENT}"),
        (0o700, STUDENT, STUDENT, "belongs to another user"),
    ],
)
def test_a_directory_another_user_can_write_is_refused_with_its_path_and_mode(
    tmp_path: Path, mode: int, uid: int, gid: int, says: str
) -> None:
    need_root()
    d = mode_dir(tmp_path, mode, uid, gid)
    problem = dir_problem(d, "orchestrator.state_dir")
    assert problem is not None
    assert str(d) in problem and f"mode {mode:04o}" in problem and says in problem
    assert problem.startswith("orchestrator.state_dir: ")


def test_only_the_directory_itself_is_judged_not_its_parents(tmp_path: Path) -> None:
    need_root()
    parent = mode_dir(tmp_path, 0o777)
    assert dir_problem(mode_dir(parent, 0o750), "log_dir") is None
