"""The gateway's copy of the active keys, re-read when meta.keys_version moves."""

from __future__ import annotations

import hashlib
import sqlite3

from orchestrator.accounting.keys import Key, KeyStore

REFRESH_S = 0.5


class KeyCache:
    def __init__(self, conn: sqlite3.Connection, refresh_s: float = REFRESH_S) -> None:
        self._store = KeyStore(conn)
        self._refresh_s = refresh_s
        self._checked_at = float("-inf")
        self._version = -1
        self._by_hash: dict[str, Key] = {}

    def lookup(self, secret: str, now: float) -> Key | None:
        """The active key with this secret. A revoked key is gone within refresh_s; a new key
        works at once, since a miss always looks for a change (one indexed row; in WAL mode
        reads never wait on writers)."""
        digest = hashlib.sha256(secret.encode()).hexdigest()
        key = self._by_hash.get(digest)
        if key is None or now - self._checked_at >= self._refresh_s:
            self._checked_at = now
            version = self._store.version()
            if version != self._version:
                self._by_hash = self._store.active_by_hash()
                self._version = version
                key = self._by_hash.get(digest)
        return key

    def active(self) -> list[Key]:
        return list(self._by_hash.values())
