"""The request log: one row per admitted request (the `requests` table), read with filters and
pruned by age. `usage_daily`, the durable roll-up, is never pruned."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from orchestrator.accounting.journal import Write

DAY_S = 86400.0
# One page of the log; a longer export goes by time windows.
MAX_LIMIT = 10_000
Order = Literal["newest", "slowest"]

_COLUMNS = (
    "id", "request_id", "trace_id", "state", "started_at", "finished_at", "owner", "key_id",
    "model", "route", "status", "prompt_tokens", "completion_tokens", "ttft_s", "duration_s",
    "streamed", "client", "error",
)  # fmt: skip
_ORDER = {"newest": "started_at DESC", "slowest": "duration_s DESC"}


@dataclass(frozen=True)
class RequestFilter:
    owner: str | None = None
    model: str | None = None
    status: int | None = None  # one HTTP status
    errors: bool = False  # only requests that failed: status >= 400, or lost
    since: float | None = None  # started at or after (Unix seconds)
    until: float | None = None  # started before
    limit: int = 100
    order: Order = "newest"

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {self.limit}")
        if self.order not in _ORDER:
            raise ValueError(f"order must be newest or slowest, got {self.order!r}")

    def sql(self) -> tuple[str, list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("owner", self.owner),
            ("model", self.model),
            ("status", self.status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if self.since is not None:
            where.append("started_at >= ?")
            args.append(self.since)
        if self.until is not None:
            where.append("started_at < ?")
            args.append(self.until)
        if self.errors:
            where.append("(status >= 400 OR state = 'lost')")
        if self.order == "slowest":
            where.append("duration_s IS NOT NULL")
        text = f" WHERE {' AND '.join(where)}" if where else ""
        return text + f" ORDER BY {_ORDER[self.order]} LIMIT {int(self.limit)}", args


@dataclass(frozen=True)
class LoggedRequest:
    id: str
    request_id: str | None
    trace_id: str | None
    state: str
    started_at: float
    finished_at: float | None
    owner: str
    key_id: str
    model: str
    route: str | None
    status: int | None
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    duration_s: float | None
    streamed: bool
    client: str | None
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S}


def parse_time(text: str, now: float) -> float:
    """Unix seconds from `2026-12-07`, `2026-12-07T21:00` (UTC unless it names a zone), or an
    age such as `30m`, `2h`, `7d` (that long before now)."""
    text = text.strip()
    unit = _UNITS.get(text[-1:])
    if unit is not None and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * unit
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"time {text[:100]!r}: give YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][+zone] or an age "
            "such as 30m, 2h, 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def read_log(conn: sqlite3.Connection, where: RequestFilter) -> list[LoggedRequest]:
    tail, args = where.sql()
    rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM requests{tail}", args)
    return [_logged(row) for row in rows]


def _logged(row: tuple[Any, ...]) -> LoggedRequest:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["streamed"] = bool(values["streamed"])
    return LoggedRequest(**values)


def prune(conn: sqlite3.Connection, keep_days: int, now: float) -> int:
    """Delete finished (or lost) requests that started more than `keep_days` ago; in flight
    ones stay, so that a gateway's death still marks them lost."""
    cutoff = now - keep_days * DAY_S
    cur = conn.execute(
        "DELETE FROM requests WHERE started_at < ? AND state != 'in_flight'", (cutoff,)
    )
    return cur.rowcount


def pruning(keep_days: int, now: float) -> Write:
    """`prune` as a write for the gateway's journal."""

    def run(conn: sqlite3.Connection) -> None:
        prune(conn, keep_days, now)

    return run
