"""The dashboard shows the latest evaluation run's leaderboard, read from its database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.daemon_harness import Daemon, free_ports, standin_model, write_secret
from tests.eval_standin import fill_eval_db

pytestmark = pytest.mark.slow
ADMIN = "eval-admin-token"
STUDENT = "eval-alice-token"


def logged_in(d: Daemon, token: str) -> httpx.Client:
    c = httpx.Client(base_url=d.url, timeout=10)
    assert c.post("/ui/api/login", json={"token": token}).status_code == 200
    return c


def test_the_overview_reads_the_latest_run(daemons: Callable[..., Daemon], tmp_path: Path) -> None:
    db = tmp_path / "eval.sqlite"
    admin = write_secret(tmp_path / "admin.token", ADMIN)
    alice = write_secret(tmp_path / "alice.token", STUDENT)
    d = daemons(
        {"alice": standin_model(free_ports(1)[0], profile="1g.10gb", token_file=str(alice))},
        orchestrator={"admin_token_file": str(admin), "eval_db": str(db)},
    )
    d.token = ADMIN
    d.start(wait_ready=["alice"])
    c = logged_in(d, ADMIN)
    empty = c.get("/ui/api/evaluation").json()
    assert empty == {"db": str(db), "run": None, "error": None}
    q = tmp_path / "q.jsonl"
    q.write_text(
        '{"question_id": 1, "category": "sorting", "turns": ["QID=1 sort"]}\n'
        '{"question_id": 2, "category": "search", "turns": ["QID=2 find"]}\n'
    )
    fill_eval_db(db, q)
    r = c.get("/ui/api/evaluation")
    assert r.headers["cache-control"] == "no-store"
    run = r.json()["run"]
    assert (run["status"], run["mode"], run["judge"]) == ("finished", "single", "judge")
    assert [(x["model"], x["mean"]) for x in run["single"]["rows"]] == [("good", 9.0), ("bad", 2.0)]
    assert run["questions"]["count"] == 2 and len(run["prompt_sha256"]) == 64
    assert "texts" not in json.dumps(run)  # the prompt texts stay in the database
    assert logged_in(d, STUDENT).get("/ui/api/evaluation").status_code == 403
    assert httpx.get(f"{d.url}/ui/api/evaluation", timeout=10).status_code == 401


def test_without_an_evaluation_database_the_panel_stays_hidden(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = daemons({"alice": standin_model(free_ports(1)[0], profile="1g.10gb")})
    d.start(wait_ready=["alice"])
    c = httpx.Client(base_url=d.url, timeout=10)
    assert c.get("/ui/api/session").status_code == 200  # open mode: a session without a token
    assert c.get("/ui/api/evaluation").json() == {"db": None, "run": None, "error": None}
