"""The accounting database: WAL, versioned migrations, upgrades from every earlier version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from orchestrator.accounting.database import DatabaseError, connect, schema_version, upgrade
from orchestrator.accounting.keys import KeyStore, Limits
from orchestrator.accounting.migrations import LATEST


def _at_version(path: Path, version: int) -> sqlite3.Connection:
    conn = connect(path, migrate=False)
    upgrade(conn, path, target=version)
    return conn


def test_a_new_database_is_at_the_latest_version_in_wal_mode(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.sqlite3")
    assert schema_version(conn) == LATEST
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()[0] == 0


@pytest.mark.parametrize("start", range(LATEST))
def test_upgrade_from_each_earlier_version_keeps_rows(tmp_path: Path, start: int) -> None:
    path = tmp_path / "a.sqlite3"
    conn = _at_version(path, start)
    assert schema_version(conn) == start
    made = None
    if start >= 1:  # keys exist from version 1 on
        made = KeyStore(conn).create("Alice", "student", Limits(rpm=5))
    conn.close()
    conn = connect(path)
    assert schema_version(conn) == LATEST
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == list(range(1, LATEST + 1))
    if made is not None:
        store = KeyStore(conn)
        assert store.get(made.key.id) == made.key
        assert store.version() == 1
    # usage tables from version 2 are there and empty
    assert conn.execute("SELECT count(*) FROM usage_daily").fetchone()[0] == 0


def test_opening_twice_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    connect(path).close()
    conn = connect(path)
    assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == LATEST


def test_a_newer_database_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    conn = connect(path)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (LATEST + 1,))
    conn.close()
    with pytest.raises(DatabaseError, match=rf"{path}.*version {LATEST + 1}"):
        connect(path)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(DatabaseError, match=str(path)):
        connect(path)
