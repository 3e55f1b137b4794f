"""`mig-orchestrator usage`: requests, tokens, errors and latency by owner, key, model or day."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import date

from orchestrator.accounting.report import GROUPS, Filter, UsageRow, period_filter, usage
from orchestrator.cli.keys import database_options, guarded, open_database
from orchestrator.text_table import render_table

COLUMNS = (
    "requests", "errors", "lost", "unmetered", "prompt_tokens", "completion_tokens",
    "total_tokens", "mean_duration_s", "mean_ttft_s",
)  # fmt: skip


def _filter(args: argparse.Namespace) -> Filter:
    first = date.fromisoformat(args.since) if args.since else None
    last = date.fromisoformat(args.until) if args.until else None
    if args.period:
        first, last = period_filter(args.period)
    return Filter(args.owner, args.model, first, last)


def _cells(row: UsageRow, by: tuple[str, ...]) -> list[str]:
    values = row.as_json()
    out = [row.group[g] for g in by]
    for c in COLUMNS:
        v = values[c]
        out.append("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
    return out


def cmd_usage(args: argparse.Namespace) -> int:
    by = tuple(g.strip() for g in args.by.split(",") if g.strip())
    try:
        where = _filter(args)
        conn, _ = open_database(args)
        rows = usage(conn, by, where)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print(json.dumps([r.as_json() for r in rows], indent=2))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow([*by, *COLUMNS])
        w.writerows(_cells(r, by) for r in rows)
    else:
        print(render_table([*(g.upper() for g in by), *map(str.upper, COLUMNS)], [
            _cells(r, by) for r in rows
        ], numbers=True))  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "usage",
        parents=[database_options()],
        help="usage per owner, key, model and day (table, CSV or JSON)",
        description="Totals from state_dir's accounting database. `lost` requests were in "
        "flight when a gateway died (tokens unknown); `unmetered` ones ended without the "
        "engine's count (client gone mid-stream) and were charged their max_tokens.",
    )
    p.add_argument(
        "--by", default="owner,model", help=f"group by any of {','.join(GROUPS)} (%(default)s)"
    )
    p.add_argument("--owner", help="only this owner")
    p.add_argument("--model", help="only this model (as models.toml names it)")
    p.add_argument("--period", help="day, week or YYYY-MM-DD..YYYY-MM-DD: the one holding today")
    p.add_argument("--since", help="first UTC day, YYYY-MM-DD")
    p.add_argument("--until", help="last UTC day, YYYY-MM-DD")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=guarded(cmd_usage))
