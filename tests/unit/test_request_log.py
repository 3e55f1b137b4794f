"""The request log: what a request writes, the filters the admin reads it by, and retention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.accounting.admission import KeyedAdmission
from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import KeyStore, Limits
from orchestrator.accounting.request_log import DAY_S, RequestFilter, parse_time, prune, read_log
from orchestrator.accounting.scope import ModelRef
from orchestrator.gateway.admission import Outcome

MODELS = (ModelRef("student-a", "coder", "Alice"), ModelRef("student-b", "chat", "Bob"))
T0 = datetime(2026, 9, 14, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


def _outcome(status: int, prompt: int | None, completion: int | None, rid: str) -> Outcome:
    return Outcome(
        status, prompt, completion, 0.01 if status < 400 else None, 0.2 + prompt_or(prompt),
        None if status < 400 else "the engine answered 500", True, "10.0.0.7:51234", rid,
        "/v1/chat/completions", "coder", trace_id="ab" * 16,
    )  # fmt: skip


def prompt_or(prompt: int | None) -> float:
    return (prompt or 0) / 100


async def test_each_request_is_logged_with_its_outcome(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    store = KeyStore(connect(db))
    alice = store.create("Alice", "student", Limits()).secret
    bob = store.create("Bob", "student", Limits()).secret
    clock = Clock()
    gate = KeyedAdmission(db, lambda: MODELS, clock)
    for i, (secret, model, status) in enumerate(
        [(alice, "coder", 200), (alice, "coder", 500), (bob, "chat", 200)]
    ):
        clock.now = T0 + i
        grant = await gate.admit(secret, model, {})
        o = _outcome(status, 10 + i, 20 + i, f"req-{i}")
        await grant.finish(o if model == "coder" else _with_model(o, "chat"))
    await gate.close()

    conn = connect(db)
    rows = read_log(conn, RequestFilter())
    assert [r.request_id for r in rows] == ["req-2", "req-1", "req-0"]  # newest first
    first = rows[-1]
    assert (first.owner, first.model, first.route, first.status) == (
        "Alice", "student-a", "/v1/chat/completions", 200,
    )  # fmt: skip
    assert (first.prompt_tokens, first.completion_tokens) == (10, 20)
    assert first.client == "10.0.0.7:51234" and first.trace_id == "ab" * 16
    assert first.ttft_s == pytest.approx(0.01) and first.duration_s == pytest.approx(0.3)
    assert first.started_at == T0 and first.state == "done"
    only = lambda **kw: [r.request_id for r in read_log(conn, RequestFilter(**kw))]  # noqa: E731
    assert only(owner="Bob") == ["req-2"]
    assert only(model="student-a") == ["req-1", "req-0"]
    assert only(status=500) == ["req-1"] == only(errors=True)
    assert only(since=T0 + 1, until=T0 + 2) == ["req-1"]
    assert only(order="slowest", limit=1) == ["req-2"]


def _with_model(o: Outcome, model: str) -> Outcome:
    from dataclasses import replace

    return replace(o, model=model)


def test_retention_prunes_old_finished_rows_and_keeps_daily_totals(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.sqlite3")
    for rid, age_days, state in [
        ("old", 31, "done"),
        ("new", 1, "done"),
        ("open", 40, "in_flight"),
    ]:
        conn.execute(
            "INSERT INTO requests (id, gateway, state, started_at, owner, key_id, model) "
            "VALUES (?, 'g', ?, ?, 'Alice', 'k', 'm')",
            (rid, state, T0 - age_days * DAY_S),
        )
    conn.execute("INSERT INTO usage_daily (day, owner, key_id, model, requests) "
                 "VALUES ('2026-08-01', 'Alice', 'k', 'm', 1)")  # fmt: skip
    assert prune(conn, 30, T0) == 1
    assert {r.id for r in read_log(conn, RequestFilter())} == {"new", "open"}
    assert conn.execute("SELECT sum(requests) FROM usage_daily").fetchone()[0] == 1


def test_a_gateway_prunes_at_start(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    conn = connect(db)
    conn.execute(
        "INSERT INTO requests (id, gateway, state, started_at, owner, key_id, model) "
        "VALUES ('old', 'g', 'done', ?, 'Alice', 'k', 'm')",
        (T0 - 8 * DAY_S,),
    )
    KeyedAdmission(db, lambda: MODELS, Clock(), keep_days=7)
    assert read_log(conn, RequestFilter()) == []


def test_times_and_bad_filters_are_named() -> None:
    assert parse_time("2h", T0) == T0 - 7200
    assert parse_time("2026-09-14", T0) == datetime(2026, 9, 14, tzinfo=UTC).timestamp()
    assert parse_time("2026-09-14T13:00+01:00", T0) == T0
    with pytest.raises(ValueError, match="'yesterday'"):
        parse_time("yesterday", T0)
    with pytest.raises(ValueError, match="limit"):
        RequestFilter(limit=0)
