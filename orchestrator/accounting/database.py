"""Open the accounting SQLite under state_dir: WAL, a busy timeout, the schema up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orchestrator.accounting.migrations import LATEST, STEPS

FILE_NAME = "accounting.sqlite3"
# Writers (the gateway's journal, the CLI, the daemon) take turns; a key change is a few rows.
BUSY_TIMEOUT_MS = 5000


class DatabaseError(Exception):
    """The accounting database cannot be used; the message names the file."""


def database_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def connect(path: Path, *, migrate: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit); migrates unless told not to."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL loses nothing on a process crash (kill -9); only a power cut may
        # drop the last transactions, which FULL would keep at an fsync per commit.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if migrate:
            upgrade(conn, path)
    except sqlite3.Error as e:
        raise DatabaseError(f"accounting database {path}: {e}") from None
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def upgrade(conn: sqlite3.Connection, path: Path, target: int = LATEST) -> int:
    """Run the steps up to `target` this database lacks, all in one transaction; returns it."""
    conn.execute("BEGIN IMMEDIATE")  # one migrator at a time; the others then see it done
    try:
        version = schema_version(conn)
        if version > LATEST:
            raise DatabaseError(
                f"accounting database {path} has schema version {version}, newer than this "
                f"mig-orchestrator knows ({LATEST}); upgrade mig-orchestrator"
            )
        for number in range(version + 1, target + 1):
            for statement in _statements(STEPS[number - 1]):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return max(version, target)


def _statements(script: str) -> list[str]:
    # executescript() would commit our transaction; split the step instead (no ';' in literals).
    return [s.strip() for s in script.split(";") if s.strip()]
