"""API keys and their owners: create, list, rotate, revoke. A secret is shown once, kept hashed."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from orchestrator.accounting.periods import parse_period

SECRET_PREFIX = "sk-mig-"
OwnerKind = Literal["student", "service"]
ALL_MODELS = "*"


class KeyRefused(Exception):
    """A key operation was refused; the message names the key, owner or field."""


@dataclass(frozen=True)
class Limits:
    """What one key may do. None means no limit; `models` None means the owner's own models."""

    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    max_tokens: int | None = None
    quota_tokens: int | None = None
    quota_period: str | None = None

    def check(self) -> None:
        for name in ("rpm", "tpm", "max_concurrent", "max_tokens", "quota_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise KeyRefused(f"{name} must be at least 1, not {value}")
        if (self.quota_tokens is None) != (self.quota_period is None):
            raise KeyRefused("a quota needs both quota_tokens and quota_period")
        if self.quota_period is not None:
            try:
                parse_period(self.quota_period)
            except ValueError as e:
                raise KeyRefused(f"quota_period: {e}") from None
        # Admission reserves a request's max_tokens before it runs: without a cap one request
        # could spend any amount past a token limit while it is checked (the concurrent-budget
        # bypass of https://github.com/BerriAI/litellm/issues/26672).
        if (self.tpm or self.quota_tokens) and self.max_tokens is None:
            raise KeyRefused("a token limit (tpm or quota) needs a max_tokens cap")
        if self.models is not None and not self.models:
            raise KeyRefused("models: give at least one model, or '*' for all")


@dataclass(frozen=True)
class Key:
    id: str
    owner: str
    owner_kind: OwnerKind
    label: str
    hint: str
    limits: Limits
    created_at: float
    rotated_at: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["limits"]["models"] = list(self.limits.models) if self.limits.models else None
        return out


@dataclass(frozen=True)
class NewKey:
    """A created or rotated key with its secret: the only time the secret is known."""

    key: Key
    secret: str = field(repr=False)


def secret_hash(secret: str) -> str:
    # A 256-bit random secret needs no slow hash: there is nothing to guess from its digest.
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> tuple[str, str]:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, f"{SECRET_PREFIX}...{secret[-4:]}"


_COLUMNS = (
    "k.id, k.owner, o.kind, k.label, k.hint, k.models, k.rpm, k.tpm, k.max_concurrent, "
    "k.max_tokens, k.quota_tokens, k.quota_period, k.created_at, k.rotated_at, k.revoked_at"
)


def _key_of(row: tuple[Any, ...]) -> Key:
    models = tuple(json.loads(row[5])) if row[5] is not None else None
    limits = Limits(models, row[6], row[7], row[8], row[9], row[10], row[11])
    return Key(row[0], row[1], row[2], row[3], row[4], limits, row[12], row[13], row[14])


class KeyStore:
    """Key rows in the accounting database; every change bumps meta.keys_version."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def create(self, owner: str, kind: OwnerKind, limits: Limits, label: str = "") -> NewKey:
        limits.check()
        if not owner.strip():
            raise KeyRefused("owner: give the student's name as the course uses it, or a service")
        if kind == "service" and limits.models is None:
            raise KeyRefused(f"service {owner!r}: name its models, or '*' for all")
        secret, hint = _new_secret()
        key_id = "key_" + secrets.token_hex(6)
        now = time.time()
        models = json.dumps(list(limits.models)) if limits.models is not None else None
        with _transaction(self.conn):
            row = self.conn.execute("SELECT kind FROM owners WHERE name = ?", (owner,)).fetchone()
            if row is None:
                self.conn.execute(
                    "INSERT INTO owners (name, kind, created_at) VALUES (?, ?, ?)",
                    (owner, kind, now),
                )
            elif row[0] != kind:
                raise KeyRefused(f"owner {owner!r} is a {row[0]}, not a {kind}")
            self.conn.execute(
                "INSERT INTO keys (id, owner, label, secret_sha256, hint, models, rpm, tpm, "
                "max_concurrent, max_tokens, quota_tokens, quota_period, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    owner,
                    label,
                    secret_hash(secret),
                    hint,
                    models,
                    limits.rpm,
                    limits.tpm,
                    limits.max_concurrent,
                    limits.max_tokens,
                    limits.quota_tokens,
                    limits.quota_period,
                    now,
                ),
            )
            _bump(self.conn)
        return NewKey(self.get(key_id), secret)

    def get(self, key_id: str) -> Key:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM keys k JOIN owners o ON o.name = k.owner WHERE k.id = ?",
            (key_id,),
        ).fetchone()
        if row is None:
            raise KeyRefused(f"no key {key_id!r}")
        return _key_of(row)

    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[Key]:
        where, args = [], []
        if owner is not None:
            where.append("k.owner = ?")
            args.append(owner)
        if not include_revoked:
            where.append("k.revoked_at IS NULL")
        sql = f"SELECT {_COLUMNS} FROM keys k JOIN owners o ON o.name = k.owner"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_key_of(r) for r in self.conn.execute(sql + " ORDER BY k.created_at", args)]

    def rotate(self, key_id: str) -> NewKey:
        """A new secret for the same key (limits and usage stay); the old one stops at once."""
        secret, hint = _new_secret()
        with _transaction(self.conn):
            self._active(key_id)
            self.conn.execute(
                "UPDATE keys SET secret_sha256 = ?, hint = ?, rotated_at = ? WHERE id = ?",
                (secret_hash(secret), hint, time.time(), key_id),
            )
            _bump(self.conn)
        return NewKey(self.get(key_id), secret)

    def revoke(self, key_id: str) -> Key:
        with _transaction(self.conn):
            self._active(key_id)
            self.conn.execute("UPDATE keys SET revoked_at = ? WHERE id = ?", (time.time(), key_id))
            _bump(self.conn)
        return self.get(key_id)

    def version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()
        return int(row[0])

    def active_by_hash(self) -> dict[str, Key]:
        rows = self.conn.execute(
            f"SELECT k.secret_sha256, {_COLUMNS} FROM keys k JOIN owners o ON o.name = k.owner "
            "WHERE k.revoked_at IS NULL"
        )
        return {r[0]: _key_of(r[1:]) for r in rows}

    def _active(self, key_id: str) -> None:
        row = self.conn.execute("SELECT revoked_at FROM keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise KeyRefused(f"no key {key_id!r}")
        if row[0] is not None:
            raise KeyRefused(f"key {key_id!r} is revoked")


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")


class _transaction:
    """BEGIN IMMEDIATE .. COMMIT, rolled back on any error (the connection is in autocommit)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
