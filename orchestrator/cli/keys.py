"""`mig-orchestrator keys create|list|rotate|revoke`: API keys in state_dir's accounting database.

Runs on the server as a user who may write state_dir; the running gateway sees a change within
about half a second. The admin REST API offers the same from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.accounting.database import DatabaseError, connect, database_path
from orchestrator.accounting.keys import Key, KeyRefused, KeyStore, Limits, OwnerKind
from orchestrator.accounting.models_source import students
from orchestrator.cli.options import DEFAULT_CONFIG
from orchestrator.config import Config, load_config
from orchestrator.text_table import render_table

Command = Callable[[argparse.Namespace], int]


def open_database(args: argparse.Namespace) -> tuple[sqlite3.Connection, Config | None]:
    """The database under --state-dir, else under the config's state_dir."""
    cfg = None if args.state_dir else load_config(Path(args.config))
    state_dir = Path(args.state_dir) if cfg is None else cfg.orchestrator.state_dir
    _check_owner(state_dir)
    return connect(database_path(state_dir)), cfg


def _check_owner(state_dir: Path) -> None:
    """Refuse root in a state_dir the daemon's user owns: files root made there (the database,
    its -wal and -shm) would lock the gateway out of its own usage."""
    try:
        owner = state_dir.stat().st_uid
    except FileNotFoundError:
        return
    if os.geteuid() == 0 and owner != 0:
        user = pwd.getpwuid(owner).pw_name
        raise DatabaseError(
            f"{state_dir} belongs to {user}: run this as that user "
            f"(sudo -u {user} mig-orchestrator ...), not as root"
        )


def database_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--config", "-c", default=str(DEFAULT_CONFIG), help="models.toml (default %(default)s)"
    )
    p.add_argument("--state-dir", help="use this state_dir instead of the config's")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _limits(args: argparse.Namespace) -> Limits:
    models = None
    if args.models is not None:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    return Limits(
        models, args.rpm, args.tpm, args.concurrency, args.max_tokens, args.quota, args.period
    )


def _check_student(owner: str, cfg: Config | None, limits: Limits, source: str) -> None:
    if cfg is None or limits.models is not None or owner in students(cfg):
        return
    raise KeyRefused(
        f"no model in {source} has student = {owner!r}: give the name the course uses "
        f"(one of {sorted(students(cfg))}), name the models with --models, or use --service"
    )


def cmd_create(args: argparse.Namespace) -> int:
    conn, cfg = open_database(args)
    kind: OwnerKind = "service" if args.service else "student"
    limits = _limits(args)
    if kind == "student":
        _check_student(args.owner, cfg, limits, args.config)
    made = KeyStore(conn).create(args.owner, kind, limits, label=args.label)
    if args.json:
        print(json.dumps({"key": made.key.as_json(), "secret": made.secret}, indent=2))
    else:
        print(made.secret)
        print(
            f"key {made.key.id} for {kind} {args.owner}: shown this once, stored only as a "
            "hash; give it to its owner now.",
            file=sys.stderr,
        )
    return 0


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M") if ts else "-"


def _limit_text(k: Key) -> str:
    lim = k.limits
    parts = [
        f"{label} {value}"
        for label, value in (
            ("rpm", lim.rpm), ("tpm", lim.tpm), ("concurrent", lim.max_concurrent),
            ("max_tokens", lim.max_tokens),
        )
        if value is not None
    ]  # fmt: skip
    if lim.quota_tokens is not None:
        parts.append(f"quota {lim.quota_tokens}/{lim.quota_period}")
    return ", ".join(parts) or "none"


def cmd_list(args: argparse.Namespace) -> int:
    conn, _ = open_database(args)
    keys = KeyStore(conn).list(owner=args.owner, include_revoked=args.all)
    if args.json:
        print(json.dumps([k.as_json() for k in keys], indent=2))
        return 0
    rows = [
        [
            k.id, k.owner, k.owner_kind, k.label or "-", k.hint,
            ",".join(k.limits.models) if k.limits.models else "own",
            _limit_text(k), _when(k.created_at), "revoked" if k.revoked_at else "active",
        ]
        for k in keys
    ]  # fmt: skip
    header = ["KEY", "OWNER", "KIND", "LABEL", "SECRET", "MODELS", "LIMITS", "CREATED", "STATE"]
    print(render_table(header, rows))
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    conn, _ = open_database(args)
    made = KeyStore(conn).rotate(args.key_id)
    print(
        json.dumps({"key": made.key.as_json(), "secret": made.secret}) if args.json else made.secret
    )
    if not args.json:
        print(f"key {made.key.id}: the old secret no longer works.", file=sys.stderr)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    conn, _ = open_database(args)
    key = KeyStore(conn).revoke(args.key_id)
    print(json.dumps(key.as_json()) if args.json else f"key {key.id} of {key.owner} revoked")
    return 0


def guarded(func: Command) -> Command:
    """The command, with a refused change or an unusable database as one line and status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (KeyRefused, DatabaseError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    return run


def _create_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("owner", help="the student's name as the course uses it, or a service's name")
    p.add_argument("--service", action="store_true", help="the owner is a service (a judge)")
    p.add_argument("--label", default="", help="a note to tell the owner's keys apart")
    p.add_argument(
        "--models", help="comma-separated models ('*' for all); default: the student's own"
    )
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute")
    p.add_argument("--concurrency", type=int, help="requests in flight at once")
    p.add_argument("--max-tokens", type=int, help="cap on max_tokens; also its default")
    p.add_argument("--quota", type=int, help="tokens per period, shared by the owner's keys")
    p.add_argument("--period", help="the quota's period: day, week or YYYY-MM-DD..YYYY-MM-DD")


def register(sub: argparse._SubParsersAction) -> None:
    db = database_options()
    keys = sub.add_parser("keys", help="create, list, rotate and revoke the gateway's API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = ksub.add_parser("create", parents=[db], help="a new key; prints its secret once")
    _create_options(p)
    p.set_defaults(func=guarded(cmd_create))
    p = ksub.add_parser("list", parents=[db], help="keys with owner, models and limits")
    p.add_argument("--owner", help="only this owner's keys")
    p.add_argument("--all", action="store_true", help="include revoked keys")
    p.set_defaults(func=guarded(cmd_list))
    p = ksub.add_parser("rotate", parents=[db], help="a new secret for a key; the old one stops")
    p.add_argument("key_id")
    p.set_defaults(func=guarded(cmd_rotate))
    p = ksub.add_parser("revoke", parents=[db], help="stop a key at once (streams finish)")
    p.add_argument("key_id")
    p.set_defaults(func=guarded(cmd_revoke))
