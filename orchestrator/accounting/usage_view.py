"""What the dashboard shows of usage: the admin's whole picture, or one student's own."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from typing import Any

from orchestrator.accounting.keys import ALL_MODELS, Key, KeyStore
from orchestrator.accounting.periods import utc_day, window_at
from orchestrator.accounting.report import Filter, usage
from orchestrator.accounting.request_log import DAY_S, RequestFilter, read_log
from orchestrator.accounting.scope import ModelRef, may_use

DAYS_SHOWN = 14
ROWS_SHOWN = 20


def quota_spent(conn: sqlite3.Connection, key: Key, now: float) -> dict[str, Any] | None:
    """The quota of `key`'s owner in the window holding `now`: limit, spent and left."""
    quota, period = key.limits.quota_tokens, key.limits.quota_period
    if quota is None or period is None:
        return None
    window = window_at(period, now)
    spent = 0
    if window is not None:
        row = conn.execute(
            "SELECT coalesce(sum(charged_tokens), 0) FROM usage_daily "
            "WHERE owner = ? AND day >= ? AND day <= ?",
            (key.owner, window.first.isoformat(), window.last.isoformat()),
        ).fetchone()
        spent = int(row[0])
    return {
        "period": period,
        "tokens": quota,
        "spent": spent,
        "left": max(0, quota - spent) if window is not None else 0,
        "open": window is not None,  # a term not started or over allows nothing
    }


def key_summary(
    conn: sqlite3.Connection, key: Key, refs: tuple[ModelRef, ...], now: float
) -> dict[str, Any]:
    lim = key.limits
    if lim.models is not None and ALL_MODELS in lim.models:
        models = [r.served for r in refs]
    else:
        models = [r.served for r in refs if may_use(key, r.served, refs)]
    return {
        "id": key.id,
        "owner": key.owner,
        "label": key.label,
        "hint": key.hint,
        "models": sorted(set(models)),
        "rpm": lim.rpm,
        "tpm": lim.tpm,
        "max_concurrent": lim.max_concurrent,
        "max_tokens": lim.max_tokens,
        "quota": quota_spent(conn, key, now),
    }


def _rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [r.as_json() for r in rows]


def admin_view(conn: sqlite3.Connection, refs: tuple[ModelRef, ...], now: float) -> dict[str, Any]:
    """Totals per owner and model, per day for the last two weeks, every key's limits and what
    is left, the slowest requests of the last week and the latest failures."""
    first = utc_day(now) - timedelta(days=DAYS_SHOWN - 1)
    week_ago = now - 7 * DAY_S
    keys = KeyStore(conn).list()
    return {
        "now": now,
        "totals": _rows(usage(conn, ("owner", "model"), Filter())),
        "daily": _rows(usage(conn, ("day", "owner", "model"), Filter(first=first))),
        "keys": [key_summary(conn, k, refs, now) for k in keys],
        "slowest": _rows(
            read_log(conn, RequestFilter(since=week_ago, limit=ROWS_SHOWN, order="slowest"))
        ),
        "failing": _rows(read_log(conn, RequestFilter(errors=True, limit=ROWS_SHOWN))),
    }


def student_view(
    conn: sqlite3.Connection, owner: str, refs: tuple[ModelRef, ...], now: float
) -> dict[str, Any]:
    """One owner's usage per model, today's and in all, their keys' models and limits left,
    and their last requests."""
    today = utc_day(now)
    return {
        "now": now,
        "owner": owner,
        "totals": _rows(usage(conn, ("model",), Filter(owner=owner))),
        "today": _rows(usage(conn, ("model",), Filter(owner=owner, first=today, last=today))),
        "keys": [key_summary(conn, k, refs, now) for k in KeyStore(conn).list(owner=owner)],
        "requests": _rows(read_log(conn, RequestFilter(owner=owner, limit=ROWS_SHOWN))),
    }
