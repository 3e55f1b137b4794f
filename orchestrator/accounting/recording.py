"""The rows one request writes: `in_flight` at admission, then `done` with its usage at the end."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import date

from orchestrator.accounting.journal import Write


@dataclass(frozen=True)
class Started:
    id: str
    gateway: str
    started_at: float
    owner: str
    key_id: str
    model: str

    def write(self) -> Write:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO requests (id, gateway, state, started_at, owner, key_id, model) "
                "VALUES (?, ?, 'in_flight', ?, ?, ?, ?)",
                (self.id, self.gateway, self.started_at, self.owner, self.key_id, self.model),
            )

        return run


@dataclass(frozen=True)
class Finished:
    id: str
    day: date
    owner: str
    key_id: str
    model: str
    finished_at: float
    status: int
    error: bool
    prompt_tokens: int
    completion_tokens: int
    charged_tokens: int
    unmetered: bool
    ttft_s: float | None
    duration_s: float
    streamed: bool
    route: str | None
    client: str | None
    error_text: str | None
    request_id: str | None = None  # X-Request-Id, as the client and the engine saw it
    trace_id: str | None = None  # the gateway's OpenTelemetry trace, when tracing is on

    def write(self) -> Write:
        def run(conn: sqlite3.Connection) -> None:
            self.log(conn)
            self.add_to_day(conn)

        return run

    def log(self, conn: sqlite3.Connection) -> None:
        """The request log's row: its outcome."""
        conn.execute(
            "UPDATE requests SET state = 'done', finished_at = ?, status = ?, "
            "prompt_tokens = ?, completion_tokens = ?, charged_tokens = ?, ttft_s = ?, "
            "duration_s = ?, streamed = ?, route = ?, client = ?, error = ?, request_id = ?, "
            "trace_id = ? WHERE id = ?",
            (
                self.finished_at, self.status, self.prompt_tokens, self.completion_tokens,
                self.charged_tokens, self.ttft_s, self.duration_s, int(self.streamed),
                self.route, self.client, self.error_text, self.request_id, self.trace_id,
                self.id,
            ),
        )  # fmt: skip

    def add_to_day(self, conn: sqlite3.Connection) -> None:
        """The durable daily roll-up."""
        conn.execute(
            "INSERT INTO usage_daily (day, owner, key_id, model, requests, errors, "
            "prompt_tokens, completion_tokens, charged_tokens, unmetered, duration_s, "
            "ttft_s, ttft_count) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (day, owner, key_id, model) DO UPDATE SET "
            "requests = requests + 1, errors = errors + excluded.errors, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens, "
            "charged_tokens = charged_tokens + excluded.charged_tokens, "
            "unmetered = unmetered + excluded.unmetered, "
            "duration_s = duration_s + excluded.duration_s, "
            "ttft_s = ttft_s + excluded.ttft_s, ttft_count = ttft_count + excluded.ttft_count",
            (
                self.day.isoformat(), self.owner, self.key_id, self.model, int(self.error),
                self.prompt_tokens, self.completion_tokens, self.charged_tokens,
                int(self.unmetered), self.duration_s, self.ttft_s or 0.0,
                int(self.ttft_s is not None),
            ),
        )  # fmt: skip


def mark_lost(conn: sqlite3.Connection) -> int:
    """Requests left `in_flight` by a gateway that died: `lost`, counted per day in usage_daily."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO usage_daily (day, owner, key_id, model, lost) "
            "SELECT date(started_at, 'unixepoch'), owner, key_id, model, count(*) FROM requests "
            "WHERE state = 'in_flight' GROUP BY 1, 2, 3, 4 "
            "ON CONFLICT (day, owner, key_id, model) DO UPDATE SET lost = lost + excluded.lost"
        )
        n = conn.execute("UPDATE requests SET state = 'lost' WHERE state = 'in_flight'").rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n
