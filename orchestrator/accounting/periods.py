"""A quota's period: a UTC day, an ISO week (Monday to Sunday, UTC) or a term (a date range)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

_TERM = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class Window:
    """Inclusive first and last UTC day of one quota window."""

    first: date
    last: date

    def contains(self, day: date) -> bool:
        return self.first <= day <= self.last

    def seconds_left(self, now: float) -> int:
        """Seconds until the window ends (0 when it already has)."""
        end = datetime.combine(self.last + timedelta(days=1), datetime.min.time(), UTC)
        return max(0, int(end.timestamp() - now) + 1)


def parse_period(text: str) -> str:
    """`day`, `week` or `YYYY-MM-DD..YYYY-MM-DD`; ValueError naming what is wrong."""
    if text in ("day", "week"):
        return text
    m = _TERM.match(text)
    if not m:
        raise ValueError(f"period {text!r}: use day, week or a term as YYYY-MM-DD..YYYY-MM-DD")
    try:
        first, last = date.fromisoformat(m[1]), date.fromisoformat(m[2])
    except ValueError as e:
        raise ValueError(f"period {text!r}: {e}") from None
    if last < first:
        raise ValueError(f"period {text!r}: the term ends before it starts")
    return text


def utc_day(ts: float) -> date:
    return datetime.fromtimestamp(ts, UTC).date()


def window_at(period: str, now: float) -> Window | None:
    """The window holding `now`; None for a term that has not started or has ended."""
    today = utc_day(now)
    if period == "day":
        return Window(today, today)
    if period == "week":
        monday = today - timedelta(days=today.weekday())
        return Window(monday, monday + timedelta(days=6))
    dates = term(period)
    return dates if dates.contains(today) else None


def term(period: str) -> Window:
    """A term's whole date range; ValueError for anything else."""
    m = _TERM.match(period)
    if m is None:
        raise ValueError(f"period {period!r} is not day, week or a term")
    return Window(date.fromisoformat(m[1]), date.fromisoformat(m[2]))
