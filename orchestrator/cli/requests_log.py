"""`mig-orchestrator requests`: the request log, filtered by owner, model, status and time."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from datetime import UTC, datetime

from orchestrator.accounting.request_log import LoggedRequest, RequestFilter, parse_time, read_log
from orchestrator.cli.keys import database_options, guarded, open_database
from orchestrator.text_table import render_table

COLUMNS = (
    "started", "owner", "model", "route", "status", "prompt_tokens", "completion_tokens",
    "ttft_s", "duration_s", "client", "request_id", "error",
)  # fmt: skip


def _filter(args: argparse.Namespace) -> RequestFilter:
    now = time.time()
    return RequestFilter(
        owner=args.owner,
        model=args.model,
        status=args.status,
        errors=args.errors,
        since=parse_time(args.since, now) if args.since else None,
        until=parse_time(args.until, now) if args.until else None,
        limit=args.limit,
        order="slowest" if args.slowest else "newest",
    )


def _cells(r: LoggedRequest) -> list[str]:
    started = datetime.fromtimestamp(r.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    status = str(r.status) if r.status is not None else r.state
    ttft = "-" if r.ttft_s is None else f"{r.ttft_s:.3f}"
    duration = "-" if r.duration_s is None else f"{r.duration_s:.3f}"
    return [
        started, r.owner, r.model, r.route or "-", status, str(r.prompt_tokens),
        str(r.completion_tokens), ttft, duration, r.client or "-", r.request_id or r.id,
        (r.error or "")[:60],
    ]  # fmt: skip


def cmd_requests(args: argparse.Namespace) -> int:
    try:
        where = _filter(args)
        conn, _ = open_database(args)
        rows = read_log(conn, where)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print(json.dumps([r.as_json() for r in rows], indent=2))
    elif fmt == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=list(LoggedRequest.__dataclass_fields__))
        w.writeheader()
        w.writerows(r.as_json() for r in rows)
    else:
        print(render_table([c.upper() for c in COLUMNS], [_cells(r) for r in rows]))
    return 0


def _http_status(text: str) -> int:
    if not text.isdigit() or not 100 <= int(text) <= 599:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not an HTTP status (100-599)")
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "requests",
        parents=[database_options()],
        help="the gateway's request log, newest first (table, CSV or JSON)",
        description="One row per request the gateway admitted with a key, kept [gateway] "
        "request_log_days. Times are UTC; --since/--until take a date, a date and time, or "
        "an age such as 2h.",
    )
    p.add_argument("--owner", help="only this owner")
    p.add_argument("--model", help="only this model (as models.toml names it)")
    p.add_argument("--status", type=_http_status, help="only this HTTP status (100-599)")
    p.add_argument("--errors", action="store_true", help="only failed requests (>= 400, lost)")
    p.add_argument("--since", help="started at or after: YYYY-MM-DD[THH:MM], or an age (2h)")
    p.add_argument("--until", help="started before: YYYY-MM-DD[THH:MM], or an age")
    p.add_argument("--slowest", action="store_true", help="longest first instead of newest")
    p.add_argument("--limit", type=int, default=100, help="at most this many (%(default)s)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=guarded(cmd_requests))
