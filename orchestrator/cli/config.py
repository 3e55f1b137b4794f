"""`check` and `plan`: models.toml against this host, without starting anything."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator.cli.options import config_options, daemon_options, load, topology_of
from orchestrator.config import (
    Config,
    ConfigError,
    check_this_host,
    config_warnings,
    unprivileged_port_start,
)
from orchestrator.engine.launch import build_launch
from orchestrator.engine.nvml_fix import fix_status
from orchestrator.gpu.inventory import Inventory
from orchestrator.gpu.nvml import NvmlError, load_inventory
from orchestrator.layout.slice_fit import slice_warnings
from orchestrator.placement import plan_partial
from orchestrator.supervisor.store import StateStore
from orchestrator.text_table import render_table
from orchestrator.units import gib_text


def cmd_check(args: argparse.Namespace) -> int:
    from orchestrator.http.auth import Tokens

    cfg = load(args)
    problems: list[str] = []
    if not args.skip_secrets:
        for host_check in (Tokens.load, check_this_host):
            try:
                host_check(cfg, args.config)
            except ConfigError as e:
                problems += str(e).splitlines()
    try:
        inv = load_inventory(topology_of(args, cfg))
    except NvmlError as e:
        if args.topology or cfg.orchestrator.topology:
            raise  # a topology that was asked for and cannot be read is an error
        print(f"{args.config}: configuration is valid; slices not checked: {e}")
        inv = None
    if inv is not None:
        plan = plan_partial(cfg, inv)
        problems += [
            f"{args.config}: models.{m}: cannot be placed: {why}"
            for m, why in sorted(plan.unplaced.items())
        ]
        for line in slice_warnings(cfg, plan.assignments, inv):
            print(f"{args.config}: warning: {line}", file=sys.stderr)
    for warning in config_warnings(cfg, unprivileged_port_start()):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(
        f"{args.config}: OK ({len(cfg.models)} models"
        + (f", {len(inv.slices)} slices)" if inv else ")")
    )
    return 0


def _plan_rows(
    cfg: Config, inv: Inventory, previous: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    plan = plan_partial(cfg, inv, previous)
    rows = []
    for name in sorted(cfg.models):
        s = plan.assignments.get(name)
        launch = build_launch(cfg, name, s, base_env={}, read_secrets=False)
        rows.append(
            {
                "model": name,
                "port": cfg.models[name].port,
                "slice": None
                if s is None
                else {
                    "uuid": s.uuid,
                    "gpu_index": s.gpu_index,
                    "profile": s.profile,
                    "memory_total_bytes": s.memory_total_bytes,
                    "shared_with": [m for m in plan.models_on(s.uuid) if m != name],
                },
                "argv": launch.argv,
                "env": launch.redacted_env(),
                "mig_nvml_fix": fix_status(s, cfg.effective_settings(name)),
                "unplaced": plan.unplaced.get(name),
            }
        )
    return rows, plan.unplaced


def _print_plan(rows: list[dict[str, Any]]) -> None:
    table = []
    for r in rows:
        s = r["slice"]
        where = "-" if s is None else f"GPU{s['gpu_index']} {s['profile'] or 'whole GPU'}"
        table.append(
            [
                r["model"],
                where,
                gib_text(s["memory_total_bytes"]) if s else "-",
                str(r["port"]),
                r["mig_nvml_fix"],
                s["uuid"] if s else (r["unplaced"] or "-"),
            ]
        )
    print(render_table(["MODEL", "SLICE", "MEMORY", "PORT", "MIG NVML FIX", "UUID"], table))
    for r in rows:
        if r["slice"] is None:
            continue
        env = " ".join(f"{k}={v}" for k, v in sorted(r["env"].items()))
        print(f"\n{r['model']}:\n  env  {env}\n  argv {' '.join(r['argv'])}")


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = load(args)
    inv = load_inventory(topology_of(args, cfg))
    previous: dict[str, str] = {}
    state_file = cfg.orchestrator.state_dir / "state.json"
    if state_file.exists():
        previous = StateStore(cfg.orchestrator.state_dir).load().assignments
    rows, unplaced = _plan_rows(cfg, inv, previous)
    if args.json:
        print(json.dumps({"models": rows, "unplaced": unplaced, "inventory": inv.source}, indent=2))
    else:
        _print_plan(rows)
    if unplaced:
        print(
            "\n" + "\n".join(f"cannot place {m}: {why}" for m, why in sorted(unplaced.items())),
            file=sys.stderr,
        )
        return 0 if args.allow_partial else 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `check` and `plan`."""
    local = config_options()
    s = sub.add_parser(
        "check",
        parents=[local],
        help="validate models.toml (and placement) without starting anything",
        description="List every problem, naming file, model and field. Exit 2 for an invalid "
        "file, 1 for problems on this host (secrets, model paths, addresses, placement), 0 when "
        "all is well. Warnings (e.g. privileged ports) go to stderr and do not change the status.",
    )
    s.add_argument(
        "--skip-secrets",
        action="store_true",
        help="skip what only this host can tell: token and API key files, local model paths, "
        "engine addresses (for checking a copy away from the server)",
    )
    s.set_defaults(func=cmd_check)

    s = sub.add_parser(
        "plan",
        parents=[local, daemon_options()],
        help="show model -> slice and the exact engine commands",
        description="Print each model's slice, memory, port, argv and env (secrets hidden).",
    )
    s.add_argument(
        "--allow-partial", action="store_true", help="exit 0 even if some models cannot be placed"
    )
    s.set_defaults(func=cmd_plan)
