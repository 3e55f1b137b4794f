"""`eval` through the real gateway with keys on, under a service key: its tokens are the
service's in the usage database, and a student's key cannot be used for models it may not see."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import KeyStore, Limits
from orchestrator.cli.main import main
from tests.gateway_support import gateway, null_server
from tests.integration.test_gateway_keys import CONFIG

pytestmark = pytest.mark.slow


def usage(db: Path, owner: str, want: int) -> tuple[int, int]:
    """Requests and completion tokens of `owner` on disk, once `want` requests are."""
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(db) as c:
            row = c.execute(
                "SELECT sum(requests), sum(completion_tokens) FROM usage_daily WHERE owner=?",
                (owner,),
            ).fetchone()
        got = (row[0] or 0, row[1] or 0)
        if got[0] >= want or time.monotonic() > deadline:
            return got


def test_a_service_key_through_the_gateway(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state"))
    accounting = tmp_path / "state" / "accounting.sqlite3"
    store = KeyStore(connect(accounting))
    key = tmp_path / "eval.key"
    key.write_text(store.create("eval", "service", Limits(models=("*",))).secret)
    key.chmod(0o600)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "category": "c", "turns": ["Sort.", "Reverse."]}\n')
    out = tmp_path / "out.json"
    with (
        null_server(tmp_path) as direct,
        gateway(tmp_path, [{"model": "null", "url": direct}], "--keys-config", str(config)) as (
            _,
            url,
        ),
    ):
        argv = ["eval", "--mode", "answers", "--questions", str(questions), "--db",
                str(tmp_path / "e.sqlite"), "--model", f"{url}#null", "--max-tokens", "8",
                "--api-key-file", str(key), "--json", str(out), "-q"]  # fmt: skip
        assert main(argv) == 0
        payload = json.loads(out.read_text())
        calls = payload["result"]["calls"]["answers"]
        assert calls["asked"] == 2 and payload["result"]["failed"] == {}
        # The gateway lists itself as the owner: the run knows it fronts vLLM engines.
        assert payload["config"]["candidates"][0]["is_vllm"] is True
        assert usage(accounting, "eval", 2) == (2, calls["completion_tokens"])
        # A student's key that may not use the model: reported, not guessed around.
        student = tmp_path / "bob.key"
        student.write_text(store.create("Bob", "student", Limits()).secret)
        student.chmod(0o600)
        argv[argv.index(str(key))] = str(student)
        assert main(argv) == 1
        failed = json.loads(out.read_text())["result"]["failed"]
        assert "does not serve null" in failed["null"]
