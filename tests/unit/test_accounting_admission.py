"""KeyedAdmission: every limit and error shape, atomic reservations, shared quotas, restarts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.accounting.admission import KeyedAdmission
from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import KeyStore, Limits
from orchestrator.accounting.scope import ModelRef
from orchestrator.gateway.admission import Outcome
from orchestrator.gateway.errors import ApiError

MODELS = (
    ModelRef("student-a", "coder", "Alice"),
    ModelRef("student-b", "chat", "Bob", engine_key="engine-b-secret"),
    ModelRef("judge", "judge", None),
)
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
T0 = datetime(2026, 9, 14, 12, 0, tzinfo=UTC).timestamp()  # a Monday, noon UTC


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "accounting.sqlite3"


@pytest.fixture
def store(db: Path) -> KeyStore:
    return KeyStore(connect(db))


@pytest.fixture
async def gate(db: Path, clock: Clock, store: KeyStore) -> AsyncIterator[KeyedAdmission]:
    g = KeyedAdmission(db, lambda: MODELS, clock)
    yield g
    await g.close()


def out(
    status: int = 200, prompt: int | None = None, completion: int | None = None, **kw: object
) -> Outcome:
    fields: dict = {
        "ttft_s": None, "duration_s": 0.1, "error": None, "streamed": False, "client": None,
        "request_id": "r", "route": "/v1/chat/completions", "model": "coder",
    }  # fmt: skip
    fields.update(kw)
    return Outcome(status, prompt, completion, **fields)


async def serve(
    gate: KeyedAdmission, key: str, outcome: Outcome, body: dict | None = None, model: str = "coder"
) -> None:
    """One request admitted and finished."""
    grant = await gate.admit(key, model, CHAT if body is None else body)
    await grant.finish(outcome)


def _refused(excinfo: pytest.ExceptionInfo[ApiError]) -> tuple[int, str, str | None]:
    e = excinfo.value
    assert set(json.loads(e.body())["error"]) == {"message", "type", "param", "code"}
    return e.status, e.type, e.code


async def test_a_missing_or_wrong_key_is_401(gate: KeyedAdmission) -> None:
    for key in (None, "", "sk-mig-wrongwrongwrong"):
        with pytest.raises(ApiError) as ei:
            await gate.admit(key, "coder", CHAT)
        assert _refused(ei) == (401, "invalid_request_error", "invalid_api_key")
    assert "wrongwrongwrong" not in str(ei.value)


async def test_a_model_the_key_may_not_use_is_404_like_a_missing_one(
    gate: KeyedAdmission, store: KeyStore
) -> None:
    alice = store.create("Alice", "student", Limits()).secret
    grant = await gate.admit(alice, "coder", CHAT)  # her own model, by its student label
    assert grant.caller.owner == "Alice" and grant.caller.kind == "student"
    assert grant.allowed("student-a") and not grant.allowed("chat")
    messages = []
    for model in ("chat", "no-such-model"):
        with pytest.raises(ApiError) as ei:
            await gate.admit(alice, model, CHAT)
        assert _refused(ei) == (404, "invalid_request_error", "model_not_found")
        messages.append(ei.value.message.replace(model, "X"))
    assert messages[0] == messages[1]


async def test_a_service_key_uses_the_models_it_names(
    gate: KeyedAdmission, store: KeyStore, clock: Clock
) -> None:
    judge = store.create("judge", "service", Limits(models=("judge", "chat"))).secret
    await gate.admit(judge, "judge", CHAT)
    await gate.admit(judge, "student-b", CHAT)  # by models.toml name as well as served name
    with pytest.raises(ApiError):
        await gate.admit(judge, "coder", CHAT)
    every = store.create("admin-tool", "service", Limits(models=("*",))).secret
    assert (await gate.admit(every, "coder", CHAT)).allowed("anything")


async def test_max_tokens_cap_is_applied_or_refused_naming_it(
    gate: KeyedAdmission, store: KeyStore
) -> None:
    alice = store.create("Alice", "student", Limits(max_tokens=64)).secret
    grant = await gate.admit(alice, "coder", CHAT)
    assert grant.body_changes == {"max_tokens": 64}
    grant = await gate.admit(alice, "coder", {**CHAT, "max_tokens": 10})
    assert grant.body_changes == {}
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(ApiError) as ei:
            await gate.admit(alice, "coder", {**CHAT, field: 65})
        assert _refused(ei) == (400, "invalid_request_error", "invalid_value")
        assert ei.value.param == field and "cap of 64" in ei.value.message
    with pytest.raises(ApiError) as ei:
        await gate.admit(alice, "coder", {**CHAT, "max_tokens": "many"})
    assert ei.value.status == 400
    embed = await gate.admit(alice, "coder", {"input": "hello"})
    assert embed.body_changes == {}


async def test_the_grant_wants_usage_and_keeps_the_key_from_the_engine(
    gate: KeyedAdmission, store: KeyStore
) -> None:
    bob = store.create("Bob", "student", Limits()).secret
    grant = await gate.admit(bob, "chat", {**CHAT, "stream": True})
    assert grant.wants_usage
    assert grant.upstream_headers == {"authorization": "Bearer engine-b-secret"}
    judge = store.create("judge", "service", Limits(models=("*",))).secret
    grant = await gate.admit(judge, "coder", CHAT)
    assert grant.upstream_headers == {"authorization": ""}  # removed: the engine has no key


async def test_a_listing_needs_a_key_and_shows_only_allowed_models(
    gate: KeyedAdmission, store: KeyStore
) -> None:
    alice = store.create("Alice", "student", Limits(rpm=1)).secret
    with pytest.raises(ApiError):
        await gate.admit(None, None, {})
    for _ in range(3):  # listing is not a request against the limits
        listing = await gate.admit(alice, None, {})
        assert [m.served for m in MODELS if listing.allowed(m.served)] == ["coder"]
        await listing.finish(out(200, model=None, route="/v1/models"))
    await gate.admit(alice, "coder", CHAT)


async def test_an_answer_without_usage_is_charged_its_reservation(
    gate: KeyedAdmission, store: KeyStore
) -> None:
    limits = Limits(quota_tokens=100, quota_period="day", max_tokens=60)
    alice = store.create("Alice", "student", limits).secret
    g = await gate.admit(alice, "coder", {**CHAT, "stream": True})
    await g.finish(out(200, error="client disconnected", streamed=True))
    await g.finish(out(200, 1000, 1000))  # a second finish changes nothing
    await serve(gate, alice, out(404))  # 60 of 100 charged; refused downstream: nothing more
    # Gone right after the usage event (as an SDK does after [DONE]): a whole answer, no error.
    await serve(gate, alice, out(200, 20, 20, error="client disconnected", streamed=True))
    with pytest.raises(ApiError):
        await gate.admit(alice, "coder", CHAT)
    row = store.conn.execute(
        "SELECT requests, errors, unmetered, charged_tokens FROM usage_daily"
    ).fetchone()
    assert row == (3, 2, 1, 100)


async def test_a_burst_of_50_against_10_per_minute_lets_exactly_10_through(
    gate: KeyedAdmission, store: KeyStore, clock: Clock
) -> None:
    alice = store.create("Alice", "student", Limits(rpm=10)).secret

    async def one() -> int | str:
        try:
            grant = await gate.admit(alice, "coder", CHAT)
        except ApiError as e:
            assert (e.status, e.type, e.code) == (429, "requests", "rate_limit_exceeded")
            return e.headers["Retry-After"]
        await asyncio.sleep(0)
        await grant.finish(out(200, 3, 5))
        return 200

    results = await asyncio.gather(*(one() for _ in range(50)))
    assert results.count(200) == 10
    assert {r for r in results if r != 200} == {"60"}
    clock.now += 30
    with pytest.raises(ApiError) as ei:
        await gate.admit(alice, "coder", CHAT)
    assert ei.value.headers["Retry-After"] == "30"
    clock.now += 30
    await gate.admit(alice, "coder", CHAT)


async def test_concurrent_requests_are_capped(gate: KeyedAdmission, store: KeyStore) -> None:
    alice = store.create("Alice", "student", Limits(max_concurrent=2)).secret
    a = await gate.admit(alice, "coder", CHAT)
    await gate.admit(alice, "coder", CHAT)
    with pytest.raises(ApiError) as ei:
        await gate.admit(alice, "coder", CHAT)
    assert ei.value.status == 429 and ei.value.headers["Retry-After"] == "1"
    assert "concurrent" in ei.value.message
    await a.finish(out(200))
    await gate.admit(alice, "coder", CHAT)


async def test_tokens_per_minute_reserve_the_cap_then_charge_what_was_used(
    gate: KeyedAdmission, store: KeyStore, clock: Clock
) -> None:
    alice = store.create("Alice", "student", Limits(tpm=100, max_tokens=50)).secret
    a = await gate.admit(alice, "coder", CHAT)
    b = await gate.admit(alice, "coder", CHAT)
    with pytest.raises(ApiError) as ei:  # 2 x 50 reserved: the minute is full
        await gate.admit(alice, "coder", CHAT)
    assert (ei.value.status, ei.value.type) == (429, "tokens")
    await a.finish(out(200, 5, 5))
    await b.finish(out(200, 5, 5))
    clock.now += 10
    c = await gate.admit(alice, "coder", CHAT)  # 20 spent, 50 held
    await c.finish(out(200, 30, 60))  # overran: charged
    with pytest.raises(ApiError) as ei:
        await gate.admit(alice, "coder", CHAT)
    # 110 in the minute: once the first two requests' 20 age out, 90 is below the limit.
    assert ei.value.headers["Retry-After"] == "50"
    clock.now += 50
    await gate.admit(alice, "coder", CHAT)


async def test_two_keys_of_one_owner_share_the_quota(
    gate: KeyedAdmission, store: KeyStore, clock: Clock
) -> None:
    limits = Limits(quota_tokens=100, quota_period="day", max_tokens=40)
    k1 = store.create("Alice", "student", limits).secret
    k2 = store.create("Alice", "student", limits).secret
    await serve(gate, k1, out(200, 20, 40))
    g = await gate.admit(k2, "coder", {**CHAT, "stream": True})
    # A stream is never cut: it ran past the quota, and all of it is charged.
    await g.finish(out(200, 20, 40, streamed=True))
    for key in (k1, k2):
        with pytest.raises(ApiError) as ei:
            await gate.admit(key, "coder", CHAT)
        assert _refused(ei) == (429, "insufficient_quota", "insufficient_quota")
        assert "used 120 of 100" in ei.value.message
        assert ei.value.headers["Retry-After"] == str(12 * 3600 + 1)
    bob = store.create("Bob", "student", limits).secret  # a new key works at once
    await gate.admit(bob, "chat", CHAT)  # another owner's quota is his own
    clock.now += 12 * 3600 + 1  # the next UTC day
    await gate.admit(k1, "coder", CHAT)


async def test_a_quota_reserves_so_a_concurrent_burst_cannot_overspend(
    gate: KeyedAdmission, store: KeyStore
) -> None:
    limits = Limits(quota_tokens=100, quota_period="week", max_tokens=10)
    alice = store.create("Alice", "student", limits).secret

    async def one() -> bool:
        try:
            await gate.admit(alice, "coder", CHAT)
        except ApiError as e:
            assert e.code == "insufficient_quota"
            return False
        return True

    assert sum(await asyncio.gather(*(one() for _ in range(50)))) == 10


async def test_a_term_quota_holds_only_within_its_dates(
    gate: KeyedAdmission, store: KeyStore
) -> None:
    term = Limits(quota_tokens=10, quota_period="2026-09-01..2026-12-20", max_tokens=5)
    later = Limits(quota_tokens=10, quota_period="2027-01-10..2027-05-01", max_tokens=5)
    alice = store.create("Alice", "student", term).secret
    bob = store.create("Bob", "student", later).secret
    await gate.admit(alice, "coder", CHAT)
    with pytest.raises(ApiError) as ei:
        await gate.admit(bob, "chat", CHAT)
    assert ei.value.code == "insufficient_quota" and "2027-01-10" in ei.value.message
    assert "Retry-After" not in ei.value.headers


async def test_revocation_and_new_keys_show_within_the_refresh(
    gate: KeyedAdmission, store: KeyStore, clock: Clock
) -> None:
    made = store.create("Alice", "student", Limits())
    grant = await gate.admit(made.secret, "coder", {**CHAT, "stream": True})
    store.revoke(made.key.id)
    clock.now += 0.5
    with pytest.raises(ApiError) as ei:
        await gate.admit(made.secret, "coder", CHAT)
    assert ei.value.status == 401
    # The stream admitted before the revocation finishes and is counted.
    await grant.finish(out(200, 4, 9, streamed=True))
    fresh = store.create("Alice", "student", Limits())
    await gate.admit(fresh.secret, "coder", CHAT)


async def test_usage_is_on_disk_when_finish_returns_and_survives_a_restart(
    db: Path, store: KeyStore, clock: Clock
) -> None:
    limits = Limits(rpm=3, quota_tokens=50, quota_period="day", max_tokens=10)
    alice = store.create("Alice", "student", limits).secret
    gate = KeyedAdmission(db, lambda: MODELS, clock)
    await serve(gate, alice, out(200, 30, 10, ttft_s=0.5, duration_s=2))
    await serve(gate, alice, out(500, error="engine died", duration_s=1))
    await gate.admit(alice, "coder", CHAT)  # in flight when the process goes
    row = store.conn.execute(
        "SELECT day, owner, model, requests, errors, prompt_tokens, completion_tokens, "
        "duration_s, ttft_s, ttft_count FROM usage_daily"
    ).fetchone()
    assert row == ("2026-09-14", "Alice", "student-a", 2, 1, 30, 10, 3.0, 0.5, 1)
    await gate.close()
    again = KeyedAdmission(db, lambda: MODELS, clock)
    assert again.lost_at_start == 1
    with pytest.raises(ApiError) as ei:  # three requests this minute, before and after
        await again.admit(alice, "coder", CHAT)
    assert ei.value.code == "rate_limit_exceeded"
    clock.now += 60
    await serve(again, alice, out(200, 5, 5))  # 40 of 50 spent before the restart
    with pytest.raises(ApiError) as ei:
        await again.admit(alice, "coder", CHAT)
    assert ei.value.code == "insufficient_quota"
    lost = store.conn.execute("SELECT sum(lost) FROM usage_daily").fetchone()[0]
    assert lost == 1
    await again.close()
