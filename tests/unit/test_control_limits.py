"""Descriptor budget of the control plane, and what a reload may not change (issue 11: 5, 6)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import Config, parse_config
from orchestrator.daemon import fd_budget
from orchestrator.http.auth import Tokens
from orchestrator.http.reload_check import refused_changes

MODEL = '[models.alice]\nmodel = "m"\nport = 8001\n'


@pytest.mark.parametrize(
    ("nofile", "engines", "cap"),
    [
        (65536, 50, 128),  # plenty: the fixed ceiling
        (256, 2, 80),  # `ulimit -n 256` with two engines: (256 - 64 - 32) // 2
        (1024, 40, 128),  # (1024 - 64 - 640) // 2 = 160, above the ceiling
        (128, 10, 4),  # not even room for the engines: the floor, with a warning
    ],
)
def test_connections_leave_room_for_engines(nofile: int, engines: int, cap: int) -> None:
    b = fd_budget.budget(nofile, engines)
    assert b.max_connections == cap
    if cap > fd_budget.MIN_CONNECTIONS:
        room = nofile - fd_budget.DAEMON_RESERVE - fd_budget.PER_ENGINE * engines
        # Accepted but not yet refused sockets included, the control plane stays inside its room.
        assert b.max_connections + 2 * b.backlog <= room


def test_raise_nofile_goes_up_to_the_hard_limit() -> None:
    # In a child, so this process keeps its own limits.
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096));"
        "from orchestrator.daemon.fd_budget import raise_nofile; print(raise_nofile(65536));"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096:
        pytest.skip("this process's hard limit is below 4096")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["4096", "4096"]


def cfg(
    listen: str = "127.0.0.1:8700", admin: Path | None = None, student: Path | None = None
) -> Config:
    text = f'[orchestrator]\nlisten = "{listen}"\n'
    if admin:
        text += f'admin_token_file = "{admin}"\n'
    text += MODEL + (f'token_file = "{student}"\n' if student else "")
    return parse_config(text)


def tokens(c: Config) -> Tokens:
    return Tokens.load(c, "models.toml")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    admin, student = tmp_path / "admin.token", tmp_path / "alice.token"
    for f, text in ((admin, "adm"), (student, "stu")):
        f.write_text(text)
        f.chmod(0o600)
    return admin, student


def test_listen_and_admin_token_changes_need_a_restart(files: tuple[Path, Path]) -> None:
    admin, _ = files
    old = cfg("0.0.0.0:8700", admin)
    new = cfg("127.0.0.1:8700")
    problems = refused_changes(old, new, tokens(old), tokens(new))
    assert [p.split(":")[0] for p in problems] == [
        "orchestrator.listen",
        "orchestrator.admin_token_file",
    ]
    assert all("restart the daemon" in p for p in problems)


def test_adding_an_admin_token_also_waits_for_a_restart(files: tuple[Path, Path]) -> None:
    admin, _ = files
    old, new = cfg(), cfg(admin=admin)
    (problem,) = refused_changes(old, new, tokens(old), tokens(new))
    assert problem.startswith("orchestrator.admin_token_file: changed from none to ")


def test_the_last_student_token_cannot_go(files: tuple[Path, Path]) -> None:
    _, student = files
    old, new = cfg(student=student), cfg()
    (problem,) = refused_changes(old, new, tokens(old), tokens(new))
    assert "the last token_file is gone" in problem


def test_student_tokens_may_change_while_the_admin_token_stays(files: tuple[Path, Path]) -> None:
    admin, student = files
    old, new = cfg(admin=admin, student=student), cfg(admin=admin)
    assert refused_changes(old, new, tokens(old), tokens(new)) == []
    assert refused_changes(new, old, tokens(new), tokens(old)) == []


def test_moving_state_dir_waits_for_a_restart(tmp_path: Path) -> None:
    old = cfg()
    new = old.model_copy(
        update={"orchestrator": old.orchestrator.model_copy(update={"state_dir": tmp_path})}
    )
    (problem,) = refused_changes(old, new, tokens(old), tokens(new))
    assert problem.startswith("orchestrator.state_dir: changed from ")
    assert "restart the daemon" in problem
