"""Keys and usage on the real daemon's control plane: admin-only keys, a student's own usage,
usage counters per owner and model on /metrics, and API keys kept apart from control tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from orchestrator.accounting.admission import KeyedAdmission
from orchestrator.accounting.scope import ModelRef
from orchestrator.gateway.admission import Outcome
from orchestrator.prom_text import parse
from tests.daemon_harness import Daemon, free_ports, write_secret
from tests.daemon_harness import standin_model as model

pytestmark = pytest.mark.slow

ADMIN, ALICE_TOKEN, BOB_TOKEN = "adm-secret-1", "tok-alice-1", "tok-bob-1"
REFS = (ModelRef("alice", "alice-chat", "Alice"), ModelRef("bob", "bob-chat", "Bob"))


def _daemon(daemons: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    admin = write_secret(tmp_path / "admin.token", ADMIN)
    alice = write_secret(tmp_path / "alice.token", ALICE_TOKEN)
    bob = write_secret(tmp_path / "bob.token", BOB_TOKEN)
    a, b = free_ports(2)
    models = {
        "alice": model(a, student="Alice", served_model_name="alice-chat",
                       token_file=str(alice), autostart=False),
        "bob": model(b, student="Bob", served_model_name="bob-chat",
                     token_file=str(bob), autostart=False),
    }  # fmt: skip
    return daemons(models, orchestrator={"admin_token_file": str(admin)}, token=ADMIN).start()


async def _serve(db: Path, secret: str, model: str, prompt: int, completion: int) -> None:
    gate = KeyedAdmission(db, lambda: REFS)
    grant = await gate.admit(secret, model, {"prompt": "x"})
    await grant.finish(
        Outcome(200, prompt, completion, 0.05, 0.5, None, False, "127.0.0.1:9", "r",
                "/v1/completions", model)
    )  # fmt: skip
    await gate.close()


async def test_keys_and_usage_through_the_control_plane(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = _daemon(daemons, tmp_path)
    r = d.post("/api/v1/keys", {"owner": "Alice", "max_tokens": 64, "rpm": 30})
    assert r.status_code == 201, r.text
    alice = r.json()
    assert alice["secret"].startswith("sk-mig-") and alice["key"]["limits"]["rpm"] == 30
    bob = d.post("/api/v1/keys", {"owner": "Bob"}).json()
    r = d.post("/api/v1/keys", {"owner": "Zed"})
    assert r.status_code == 400 and "student = 'Zed'" in r.json()["error"]
    assert d.post("/api/v1/keys", {"owner": "Alice", "rpm": 0}).status_code == 400
    # Control tokens and API keys are separate credentials.
    assert d.post("/api/v1/keys", {"owner": "Alice"}, token=ALICE_TOKEN).status_code == 403
    assert d.get("/api/v1/keys", token=alice["secret"]).status_code == 401
    assert d.get("/api/v1/usage", token=alice["secret"]).status_code == 401

    db = d.root / "state" / "accounting.sqlite3"
    await _serve(db, alice["secret"], "alice-chat", 11, 22)
    await _serve(db, bob["secret"], "bob-chat", 5, 6)

    everyone = d.get("/api/v1/usage").json()
    assert {(u["group"]["owner"], u["total_tokens"]) for u in everyone} == {
        ("Alice", 33),
        ("Bob", 11),
    }
    mine = d.get("/api/v1/usage?by=owner,model,day", token=ALICE_TOKEN).json()
    assert [(u["group"]["owner"], u["group"]["model"], u["prompt_tokens"]) for u in mine] == [
        ("Alice", "alice", 11)
    ]
    assert d.get("/api/v1/usage?owner=Bob", token=ALICE_TOKEN).status_code == 403
    assert d.get("/api/v1/usage?by=key&period=month").status_code == 400

    page = parse(d.get("/metrics").text)
    samples = page.find("mig_orchestrator_usage_completion_tokens_total")
    assert {(s.labels["owner"], s.labels["model"], s.value) for s in samples} == {
        ("Alice", "alice", 22),
        ("Bob", "bob", 6),
    }
    assert all(set(s.labels) == {"owner", "model"} for s in page.samples() if "usage" in s.name)

    key_id = alice["key"]["id"]
    rotated = d.post(f"/api/v1/keys/{key_id}/rotate").json()
    assert rotated["key"]["id"] == key_id and rotated["secret"] != alice["secret"]
    r = _delete(d, f"/api/v1/keys/{key_id}")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert _delete(d, f"/api/v1/keys/{key_id}").status_code == 400
    assert _delete(d, "/api/v1/keys/key_nope").status_code == 404
    listed = d.get("/api/v1/keys?all=true").json()
    assert {k["owner"] for k in listed} == {"Alice", "Bob"}
    assert all("secret" not in k and len(k["hint"]) == len("sk-mig-...") + 4 for k in listed)


def _delete(d: Daemon, path: str) -> httpx.Response:
    return httpx.delete(f"{d.url}{path}", headers=d.headers(), timeout=10)


async def test_request_log_over_rest_with_a_students_own(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = _daemon(daemons, tmp_path)
    alice = d.post("/api/v1/keys", {"owner": "Alice"}).json()["secret"]
    bob = d.post("/api/v1/keys", {"owner": "Bob"}).json()["secret"]
    db = d.root / "state" / "accounting.sqlite3"
    await _serve(db, alice, "alice-chat", 11, 22)
    await _serve(db, bob, "bob-chat", 5, 6)
    everyone = d.get("/api/v1/requests").json()
    assert [(r["owner"], r["prompt_tokens"], r["completion_tokens"]) for r in everyone] == [
        ("Bob", 5, 6),
        ("Alice", 11, 22),
    ]  # newest first
    first = everyone[1]
    assert (first["model"], first["route"], first["status"], first["client"]) == (
        "alice", "/v1/completions", 200, "127.0.0.1:9",
    )  # fmt: skip
    assert first["ttft_s"] == 0.05 and first["duration_s"] == 0.5 and first["request_id"] == "r"
    assert [r["owner"] for r in d.get("/api/v1/requests?model=bob").json()] == ["Bob"]
    assert d.get("/api/v1/requests?status=500").json() == []
    assert len(d.get("/api/v1/requests?since=1h&order=slowest&limit=1").json()) == 1
    mine = d.get("/api/v1/requests", token=ALICE_TOKEN).json()
    assert [r["owner"] for r in mine] == ["Alice"]
    assert d.get("/api/v1/requests?owner=Bob", token=ALICE_TOKEN).status_code == 403
    r = d.get("/api/v1/requests?since=yesterday")
    assert r.status_code == 400 and "'yesterday'" in r.json()["error"]
    assert d.get("/api/v1/requests", token=alice).status_code == 401  # an API key is no token
