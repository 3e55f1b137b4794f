"""Keys: created, listed, rotated, revoked; the secret is shown once and stored only as a hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import SECRET_PREFIX, KeyRefused, KeyStore, Limits, secret_hash


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(connect(tmp_path / "a.sqlite3"))


def test_create_shows_the_secret_once_and_stores_its_hash(store: KeyStore, tmp_path: Path) -> None:
    made = store.create("Alice", "student", Limits(rpm=10, max_tokens=256), label="laptop")
    assert made.secret.startswith(SECRET_PREFIX) and len(made.secret) > 40
    assert made.key.hint.endswith(made.secret[-4:])
    assert made.key.limits.rpm == 10 and made.key.label == "laptop"
    assert made.secret not in repr(made)
    rows = store.conn.execute("SELECT secret_sha256 FROM keys").fetchall()
    assert rows == [(secret_hash(made.secret),)]
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert made.secret.encode() not in (tmp_path / "a.sqlite3").read_bytes()


def test_list_rotate_revoke(store: KeyStore) -> None:
    a = store.create("Alice", "student", Limits())
    b = store.create("judge", "service", Limits(models=("*",)))
    assert [k.id for k in store.list()] == [a.key.id, b.key.id]
    assert [k.id for k in store.list(owner="judge")] == [b.key.id]
    v = store.version()
    rotated = store.rotate(a.key.id)
    assert rotated.key.id == a.key.id and rotated.secret != a.secret
    assert secret_hash(a.secret) not in store.active_by_hash()
    assert secret_hash(rotated.secret) in store.active_by_hash()
    store.revoke(a.key.id)
    assert store.version() == v + 2
    assert [k.id for k in store.list()] == [b.key.id]
    assert store.list(include_revoked=True)[0].revoked_at is not None
    with pytest.raises(KeyRefused, match="revoked"):
        store.rotate(a.key.id)
    with pytest.raises(KeyRefused, match="no key 'key_nope'"):
        store.revoke("key_nope")


@pytest.mark.parametrize(
    ("limits", "words"),
    [
        (Limits(rpm=0), "rpm must be at least 1"),
        (Limits(quota_tokens=100), "needs both"),
        (Limits(quota_tokens=100, quota_period="month", max_tokens=10), "quota_period"),
        (Limits(tpm=100), "needs a max_tokens cap"),
        (Limits(quota_tokens=100, quota_period="day"), "needs a max_tokens cap"),
        (Limits(models=()), "at least one model"),
    ],
)
def test_bad_limits_are_refused_by_name(store: KeyStore, limits: Limits, words: str) -> None:
    with pytest.raises(KeyRefused, match=words):
        store.create("Alice", "student", limits)


def test_owner_kind_is_fixed_and_a_service_names_its_models(store: KeyStore) -> None:
    store.create("Alice", "student", Limits())
    with pytest.raises(KeyRefused, match="'Alice' is a student"):
        store.create("Alice", "service", Limits(models=("*",)))
    with pytest.raises(KeyRefused, match="service 'judge': name its models"):
        store.create("judge", "service", Limits())
