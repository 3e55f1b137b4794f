"""`status`, `start`, `stop`, `restart`, `logs`, `reload`: ask the daemon about its models."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli.options import daemon_options
from orchestrator.client import ControlClient, ControlError, resolve_token
from orchestrator.http.standby_view import detail_lines, standby_cell
from orchestrator.text_table import render_table


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(args.url, resolve_token(args.token_file))


def _status_rows(models: list[dict[str, Any]]) -> str:
    rows = []
    for m in models:
        s = m["slice"]
        where = "-" if not s else f"GPU{s['gpu_index']} {s['profile'] or 'whole'}"
        up = "-" if m["uptime_s"] is None else f"{m['uptime_s']:.0f}s"
        rows.append(
            [
                m["name"],
                m["state"],
                str(m["pid"] or "-"),
                str(m["port"]),
                where,
                up,
                str(m["restarts"]),
                standby_cell(m),
                (m["reason"] or "")[:80],
            ]
        )
    header = ["MODEL", "STATE", "PID", "PORT", "SLICE", "UPTIME", "RESTARTS", "STANDBY", "REASON"]
    return render_table(header, rows)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        models = [c.model(args.name, args.show_env)] if args.name else c.models(args.show_env)
    if args.json:
        print(json.dumps(models if not args.name else models[0], indent=2))
    else:
        print(_status_rows(models))
        if args.name:
            m = models[0]
            print(f"\nendpoint: {m['endpoint']}  (model name: {m['served_model_name']})")
            if m["last_exit"]:
                print(f"last exit: {m['last_exit']}")
            print("\n".join(detail_lines(m)))
    return 0


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ControlError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def cmd_command(args: argparse.Namespace) -> int:
    overrides = None
    if getattr(args, "clear_overrides", False):
        overrides = {}
    if getattr(args, "set", None):
        overrides = _parse_overrides(args.set)
    with _client(args) as c:
        m = c.command(args.name, args.verb, overrides)
        if args.wait:
            want = {"stopped"} if args.verb == "stop" else {"ready"}
            m = c.wait_for(args.name, want, args.timeout)
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print(f"{args.name}: {m['state']}" + (f" ({m['reason']})" if m.get("reason") else ""))
    return 1 if args.wait and m["state"] == "failed" else 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as c:
        lines = c.logs(args.name, args.tail)
    print("\n".join(lines))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.reload()
    print(
        json.dumps(r, indent=2)
        if args.json
        else "  ".join(f"{k}: {', '.join(v) or '-'}" for k, v in r.items())
    )
    return 0


def _add_command(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser, verb: str
) -> None:
    s = sub.add_parser(verb, parents=[common], help=f"{verb} a model's engine")
    s.add_argument("name", help="model name from models.toml")
    s.add_argument(
        "--wait",
        action="store_true",
        help="wait until ready (or stopped) and exit 1 if it failed",
    )
    s.add_argument("--timeout", type=float, default=900.0, help="seconds to wait with --wait")
    if verb == "restart":
        s.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="runtime override of a vLLM setting, e.g. enable_prefix_caching=false",
        )
        s.add_argument(
            "--clear-overrides", action="store_true", help="drop earlier runtime overrides"
        )
    s.set_defaults(func=cmd_command, verb=verb)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the commands that ask the daemon about its models."""
    common = daemon_options()
    s = sub.add_parser(
        "status", parents=[common], help="show models and engine states from the daemon"
    )
    s.add_argument("name", nargs="?", help="one model (default: all)")
    s.add_argument(
        "--show-env", action="store_true", help="show env values in --json (admin token only)"
    )
    s.set_defaults(func=cmd_status)

    for verb in ("start", "stop", "restart"):
        _add_command(sub, common, verb)

    s = sub.add_parser(
        "logs", parents=[common], help="print the last lines of a model's engine log"
    )
    s.add_argument("name")
    s.add_argument("--tail", "-n", type=int, default=100)
    s.set_defaults(func=cmd_logs)

    s = sub.add_parser(
        "reload",
        parents=[common],
        help="re-read models.toml in the daemon and apply the difference",
    )
    s.set_defaults(func=cmd_reload)
