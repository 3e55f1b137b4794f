"""Reading usage back: grouped by owner, key, model and day over a period; totals for Prometheus."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from orchestrator.accounting.periods import parse_period, term, window_at

GROUPS = ("owner", "key", "model", "day")
_COLUMN = {"owner": "owner", "key": "key_id", "model": "model", "day": "day"}


@dataclass(frozen=True)
class Filter:
    owner: str | None = None
    model: str | None = None
    first: date | None = None  # inclusive UTC days
    last: date | None = None


@dataclass(frozen=True)
class UsageRow:
    group: dict[str, str]
    requests: int
    errors: int
    lost: int  # in flight when a gateway died: tokens unknown
    unmetered: int  # ended without the engine's usage (client gone mid-stream)
    prompt_tokens: int
    completion_tokens: int
    mean_duration_s: float | None
    mean_ttft_s: float | None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.total_tokens}


def period_filter(period: str, now: float | None = None) -> tuple[date, date]:
    """The days of today's day or week, or of a whole term; ValueError naming a bad period."""
    current = window_at(parse_period(period), time.time() if now is None else now)
    dates = current if period in ("day", "week") and current else term(period)
    return dates.first, dates.last


def usage(conn: sqlite3.Connection, by: tuple[str, ...], where: Filter) -> list[UsageRow]:
    for g in by:
        if g not in GROUPS:
            raise ValueError(f"cannot group usage by {g!r}: choose from {', '.join(GROUPS)}")
    clauses, args = _where(where)
    cols = [_COLUMN[g] for g in by]
    select = ", ".join([*cols, _SUMS])
    sql = f"SELECT {select} FROM usage_daily{clauses}"
    if cols:
        sql += f" GROUP BY {', '.join(cols)} ORDER BY {', '.join(cols)}"
    rows = []
    for r in conn.execute(sql, args):
        n = len(cols)
        requests, errors, lost, unmetered, prompt, completion, dur, ttft, ttft_n = r[n:]
        if requests is None and not lost:
            continue  # no rows at all: an empty sum
        row = UsageRow(
            dict(zip(by, (str(v) for v in r[:n]), strict=True)),
            requests or 0, errors or 0, lost or 0, unmetered or 0, prompt or 0,
            completion or 0, dur / requests if requests else None,
            ttft / ttft_n if ttft_n else None,
        )  # fmt: skip
        rows.append(row)
    return rows


_SUMS = (
    "sum(requests), sum(errors), sum(lost), sum(unmetered), sum(prompt_tokens), "
    "sum(completion_tokens), sum(duration_s), sum(ttft_s), sum(ttft_count)"
)


def _where(f: Filter) -> tuple[str, list[Any]]:
    parts: list[str] = []
    args: list[Any] = []
    for column, value in (("owner", f.owner), ("model", f.model)):
        if value is not None:
            parts.append(f"{column} = ?")
            args.append(value)
    if f.first is not None:
        parts.append("day >= ?")
        args.append(f.first.isoformat())
    if f.last is not None:
        parts.append("day <= ?")
        args.append(f.last.isoformat())
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


def counters(conn: sqlite3.Connection) -> list[UsageRow]:
    """All-time totals per owner and model: monotonic, as Prometheus counters must be."""
    return usage(conn, ("owner", "model"), Filter())
