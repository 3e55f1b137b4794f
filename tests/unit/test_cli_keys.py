"""`mig-orchestrator keys` and `usage` on a state_dir: a secret printed once, clear refusals,
usage by owner, model and day as a table, CSV and JSON."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.accounting.admission import KeyedAdmission
from orchestrator.accounting.scope import ModelRef
from orchestrator.cli.main import main
from orchestrator.gateway.admission import Outcome

CONFIG = """
[orchestrator]
state_dir = "{state}"
[models.student-a]
student = "Alice"
model = "/models/a"
served_model_name = "coder"
port = 18001
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_list_rotate_revoke(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    code, out, err = run(capsys, "keys", "create", "Alice", "-c", c, "--rpm", "5",
                         "--max-tokens", "64", "--quota", "1000", "--period", "week")  # fmt: skip
    secret = out.strip()
    assert code == 0 and secret.startswith("sk-mig-") and "shown this once" in err
    code, out, err = run(capsys, "keys", "create", "Zed", "-c", c)
    assert code == 1 and "no model in" in err and "'Zed'" in err and "--service" in err
    code, _, err = run(capsys, "keys", "create", "Alice", "-c", c, "--tpm", "10")
    assert code == 1 and "needs a max_tokens cap" in err
    code, _, _ = run(capsys, "keys", "create", "judge", "--service", "--models", "*", "-c", c)
    assert code == 0
    code, out, _ = run(capsys, "keys", "list", "-c", c, "--json")
    listed = json.loads(out)
    assert [k["owner"] for k in listed] == ["Alice", "judge"]
    assert secret not in out and listed[0]["hint"].endswith(secret[-4:])
    key_id = listed[0]["id"]
    code, out, _ = run(capsys, "keys", "list", "-c", c)
    assert "quota 1000/week" in out and "rpm 5" in out
    code, out, _ = run(capsys, "keys", "rotate", key_id, "-c", c)
    assert code == 0 and out.strip() != secret
    code, out, _ = run(
        capsys, "keys", "revoke", key_id, "--state-dir", str(config.parent / "state")
    )
    assert code == 0 and "revoked" in out
    code, _, err = run(capsys, "keys", "revoke", key_id, "-c", c)
    assert code == 1 and "is revoked" in err
    code, out, _ = run(capsys, "keys", "list", "-c", c, "--all", "--json")
    assert [k["revoked_at"] is not None for k in json.loads(out)] == [True, False]


def _some_usage(config: Path, secret: str) -> None:
    async def go() -> None:
        db = config.parent / "state" / "accounting.sqlite3"
        gate = KeyedAdmission(db, lambda: (ModelRef("student-a", "coder", "Alice"),))
        for prompt, completion, status in ((10, 20, 200), (5, 0, 500)):
            g = await gate.admit(secret, "coder", {"prompt": "x"})
            await g.finish(Outcome(status, prompt, completion, 0.1, 1.0, None, False, None,
                                   "r", "/v1/completions", "coder"))  # fmt: skip
        await gate.admit(secret, "coder", {"prompt": "x"})  # in flight at the end
        await gate.close()

    asyncio.run(go())


def test_usage_as_table_csv_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    _, out, _ = run(capsys, "keys", "create", "Alice", "-c", c)
    _some_usage(config, out.strip())
    code, out, _ = run(capsys, "usage", "-c", c, "--format", "json")
    (row,) = json.loads(out)
    assert row["group"] == {"owner": "Alice", "model": "student-a"}
    assert (row["requests"], row["errors"], row["total_tokens"]) == (2, 1, 35)
    assert row["mean_duration_s"] == 1.0
    today = datetime.now(UTC).date().isoformat()
    code, out, _ = run(capsys, "usage", "-c", c, "--by", "day", "--format", "csv",
                       "--period", "week")  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["day"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        (today, "15", "20")
    ]
    code, out, _ = run(capsys, "usage", "-c", c, "--by", "owner,model")
    assert code == 0 and "Alice" in out and "REQUESTS" in out
    code, out, _ = run(capsys, "usage", "-c", c, "--owner", "Bob", "--json")
    assert json.loads(out) == []
    code, _, err = run(capsys, "usage", "-c", c, "--period", "month")
    assert code == 2 and "period 'month'" in err
    code, _, err = run(capsys, "usage", "-c", c, "--by", "student")
    assert code == 2 and "cannot group usage by 'student'" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a state_dir by another user")
def test_root_is_refused_in_a_state_dir_the_daemon_user_owns(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = config.parent / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    code, _, err = run(capsys, "keys", "create", "Alice", "-c", str(config))
    assert code == 1 and "sudo -u" in err and "not as root" in err
    assert not (state / "accounting.sqlite3").exists()
