"""Commands that work on this host without the daemon: serve, check, plan, slices."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator.config import (
    Config,
    ConfigError,
    check_this_host,
    config_warnings,
    load_config,
    unprivileged_port_start,
)
from orchestrator.engine.launch import build_launch
from orchestrator.engine.nvml_fix import fix_status
from orchestrator.gpu.inventory import Gpu, Inventory
from orchestrator.gpu.nvml import NvmlError, load_inventory
from orchestrator.layout.slice_fit import slice_warnings
from orchestrator.placement import plan_partial
from orchestrator.supervisor.store import StateStore
from orchestrator.text_table import render_table
from orchestrator.units import GIB

DEFAULT_CONFIG = Path(os.environ.get("MIG_ORCH_CONFIG", "/etc/mig-orchestrator/models.toml"))


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _load(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


def _topology(args: argparse.Namespace, cfg: Config | None) -> Path | None:
    """--topology wins over the config's `topology`; None means the real driver."""
    topology = args.topology or (cfg.orchestrator.topology if cfg else None)
    return Path(topology) if topology else None


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.daemon.serve import ServeOptions, serve

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(levelname)s %(name)s: %(message)s"
        if os.environ.get("INVOCATION_ID")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    topology = Path(args.topology) if args.topology else None
    return serve(ServeOptions(Path(args.config), topology, args.allow_partial))


def cmd_check(args: argparse.Namespace) -> int:
    from orchestrator.http.auth import Tokens

    cfg = _load(args)
    problems: list[str] = []
    if not args.skip_secrets:
        for host_check in (Tokens.load, check_this_host):
            try:
                host_check(cfg, args.config)
            except ConfigError as e:
                problems += str(e).splitlines()
    try:
        inv = load_inventory(_topology(args, cfg))
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
                _gib(s["memory_total_bytes"]) if s else "-",
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
    cfg = _load(args)
    inv = load_inventory(_topology(args, cfg))
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


def _gpu_json(g: Gpu) -> dict[str, Any]:
    return {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "mig_enabled": g.mig_enabled,
        "memory_total_bytes": g.memory_total_bytes,
        "memory_used_bytes": g.memory_used_bytes,
        "slices": [
            {
                "uuid": s.uuid,
                "profile": s.profile,
                "gi_id": s.gi_id,
                "ci_id": s.ci_id,
                "memory_total_bytes": s.memory_total_bytes,
                "memory_used_bytes": s.memory_used_bytes,
            }
            for s in g.slices
        ],
    }


def _print_slices(inv: Inventory) -> None:
    rows = [
        [
            f"GPU{s.gpu_index}",
            s.profile or "whole GPU",
            str(s.gi_id if s.gi_id is not None else "-"),
            str(s.ci_id if s.ci_id is not None else "-"),
            _gib(s.memory_total_bytes),
            _gib(s.memory_used_bytes),
            s.uuid,
        ]
        for s in inv.slices
    ]
    print(f"source: {inv.source}")
    for g in inv.gpus:
        print(
            f"GPU{g.index}: {g.name} {g.uuid} MIG {'on' if g.mig_enabled else 'off'}, "
            f"{_gib(g.memory_total_bytes)}"
        )
        if g.mig_enabled and not g.slices:
            print(
                f"  note: MIG is enabled on GPU{g.index} but it has no MIG devices, so nothing can "
                "run there: create instances (nvidia-smi mig -cgi ... -C) or disable MIG"
            )
    print(render_table(["GPU", "PROFILE", "GI", "CI", "MEMORY", "USED", "UUID"], rows))


def cmd_slices(args: argparse.Namespace) -> int:
    cfg = _load(args) if args.config and Path(args.config).exists() else None
    inv = load_inventory(_topology(args, cfg))
    if args.json:
        doc = {"source": inv.source, "gpus": [_gpu_json(g) for g in inv.gpus]}
        print(json.dumps(doc, indent=2))
    else:
        _print_slices(inv)
    return 0


def _config_options() -> argparse.ArgumentParser:
    """--config and --topology, shared by every local command."""
    local = argparse.ArgumentParser(add_help=False)
    local.add_argument(
        "--config",
        "-c",
        default=str(DEFAULT_CONFIG),
        help="models.toml (env MIG_ORCH_CONFIG; default %(default)s)",
    )
    local.add_argument(
        "--topology",
        help="simulated GPU/MIG topology instead of NVML: a file or a shipped name (a100-mixed)",
    )
    return local


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add serve, check, plan and slices; `common` carries --json (and the daemon options)."""
    local = _config_options()
    s = sub.add_parser(
        "serve",
        parents=[local],
        help="run the daemon in the foreground",
        description="Place every model on a slice, run and supervise its vLLM engine, "
        "and serve the control plane until SIGTERM. SIGHUP reloads models.toml.",
    )
    s.add_argument(
        "--allow-partial", action="store_true", help="start even if some models cannot be placed"
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=cmd_serve)

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
        parents=[local, common],
        help="show model -> slice and the exact engine commands",
        description="Print each model's slice, memory, port, argv and env (secrets hidden).",
    )
    s.add_argument(
        "--allow-partial", action="store_true", help="exit 0 even if some models cannot be placed"
    )
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser(
        "slices", parents=[local, common], help="list GPUs and MIG slices (NVML or --topology)"
    )
    s.set_defaults(func=cmd_slices)
