"""The evaluation's SQLite database: versioned migrations, the answer and judgment cache, runs.

Each answer and judgment is committed as it arrives, so a run stopped at any point resumes
without asking anything twice. Transport errors are not stored: a resumed run asks again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Append only: a database at version N gets migrations N+1.. applied, each in one transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        config TEXT NOT NULL,
        result TEXT
    );
    CREATE TABLE answers (
        model TEXT NOT NULL,
        question TEXT NOT NULL,
        turn INTEGER NOT NULL,
        settings TEXT NOT NULL,
        text TEXT NOT NULL,
        finish_reason TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_s REAL NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (model, question, turn, settings)
    );
    CREATE TABLE judgments (
        key TEXT PRIMARY KEY,
        judge TEXT NOT NULL,
        raw TEXT NOT NULL,
        value TEXT,
        error TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_s REAL NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX judgments_by_judge ON judgments (judge);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The database cannot be used; the message names the file."""


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float


@dataclass(frozen=True)
class Judgment:
    raw: str
    value: int | str | None
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION; refuse a database written by a newer version."""
    current = _version(db)
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {current} is newer than this program's {SCHEMA_VERSION}"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        # executescript commits first; the explicit transaction keeps each step all-or-nothing.
        db.executescript(
            f"BEGIN; {MIGRATIONS[version - 1]}; PRAGMA user_version = {version}; COMMIT;"
        )


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None)
            # WAL lets the dashboard read while a run writes.
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=5000")
            migrate(self.db, path)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, model: str, question: str, turn: int, settings: str) -> Answer | None:
        row = self.db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, latency_s FROM answers "
            "WHERE model=? AND question=? AND turn=? AND settings=?",
            (model, question, turn, settings),
        ).fetchone()
        return Answer(*row) if row else None

    def put_answer(self, model: str, question: str, turn: int, settings: str, a: Answer) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?)",
            (model, question, turn, settings, a.text, a.finish_reason, a.prompt_tokens,
             a.completion_tokens, a.latency_s, time.time()),
        )  # fmt: skip

    def judgment(self, key: str) -> Judgment | None:
        row = self.db.execute(
            "SELECT raw, value, error, prompt_tokens, completion_tokens, latency_s "
            "FROM judgments WHERE key=?",
            (key,),
        ).fetchone()
        if not row:
            return None
        return Judgment(row[0], json.loads(row[1]) if row[1] else None, *row[2:])

    def put_judgment(self, key: str, judge: str, j: Judgment) -> None:
        value = json.dumps(j.value) if j.value is not None else None
        self.db.execute(
            "INSERT OR REPLACE INTO judgments VALUES (?,?,?,?,?,?,?,?,?)",
            (
                key,
                judge,
                j.raw,
                value,
                j.error,
                j.prompt_tokens,
                j.completion_tokens,
                j.latency_s,
                time.time(),
            ),
        )

    def judge_latency(self, judge: str) -> float | None:
        """Mean seconds per call of this judge in earlier runs, for the time estimate."""
        row = self.db.execute(
            "SELECT AVG(latency_s) FROM judgments WHERE judge=?", (judge,)
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def begin_run(self, key: str, config: dict[str, Any]) -> tuple[int, bool]:
        """The run's id, and whether it existed (a resume); its config is refreshed."""
        now = time.time()
        row = self.db.execute("SELECT id FROM runs WHERE key=?", (key,)).fetchone()
        text = json.dumps(config, sort_keys=True)
        if row:
            self.db.execute(
                "UPDATE runs SET status='running', updated=?, config=? WHERE id=?",
                (now, text, row[0]),
            )
            return int(row[0]), True
        cur = self.db.execute(
            "INSERT INTO runs (key, status, created, updated, config) VALUES (?,?,?,?,?)",
            (key, "running", now, now, text),
        )
        return int(cur.lastrowid or 0), False

    def finish_run(self, run_id: int, status: str, result: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE runs SET status=?, updated=?, result=? WHERE id=?",
            (status, time.time(), json.dumps(result, sort_keys=True), run_id),
        )


def latest_result(path: Path) -> dict[str, Any] | None:
    """The newest run with a leaderboard, read-only; None when there is none or no database."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute(
                "SELECT id, status, updated, config, result FROM runs "
                "WHERE result IS NOT NULL ORDER BY updated DESC LIMIT 1"
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from None
    if row is None:
        return None
    return {
        "run_id": row[0],
        "status": row[1],
        "updated": row[2],
        "config": json.loads(row[3]),
        "result": json.loads(row[4]),
    }
