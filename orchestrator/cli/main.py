"""The `mig-orchestrator` command: run the daemon, check and plan a config, drive the daemon."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import __version__
from orchestrator.config import Config, ConfigError, check_local_models, load_config
from orchestrator.control.client import (
    ControlClient,
    ControlError,
    add_daemon_options,
    resolve_token,
)
from orchestrator.control.standby_view import detail_lines, standby_cell
from orchestrator.engine.launch import build_launch
from orchestrator.gpu.inventory import GIB, Inventory
from orchestrator.gpu.nvml import Nvml, NvmlError
from orchestrator.placement import PlacementError, plan_partial
from orchestrator.supervisor.store import StateStore

DEFAULT_CONFIG = Path(os.environ.get("MIG_ORCH_CONFIG", "/etc/mig-orchestrator/models.toml"))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _load(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


def _inventory(args: argparse.Namespace, cfg: Config | None) -> Inventory:
    topology = args.topology or (cfg.orchestrator.topology if cfg else None)
    with Nvml.open(Path(topology) if topology else None) as nv:
        return nv.inventory()


# ----- local commands -----


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.control.daemon import ServeOptions, serve

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
    from orchestrator.control.auth import Tokens

    cfg = _load(args)
    problems: list[str] = []
    if not args.skip_secrets:
        for host_check in (Tokens.load, check_local_models):
            try:
                host_check(cfg, args.config)
            except ConfigError as e:
                problems += str(e).splitlines()
    try:
        inv = _inventory(args, cfg)
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
                "unplaced": plan.unplaced.get(name),
            }
        )
    return rows, plan.unplaced


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = _load(args)
    inv = _inventory(args, cfg)
    previous: dict[str, str] = {}
    state_file = cfg.orchestrator.state_dir / "state.json"
    if state_file.exists():
        previous = StateStore(cfg.orchestrator.state_dir).load().assignments
    rows, unplaced = _plan_rows(cfg, inv, previous)
    if args.json:
        print(json.dumps({"models": rows, "unplaced": unplaced, "inventory": inv.source}, indent=2))
    else:
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
                    s["uuid"] if s else (r["unplaced"] or "-"),
                ]
            )
        print(_table(table, ["MODEL", "SLICE", "MEMORY", "PORT", "UUID"]))
        for r in rows:
            if r["slice"] is None:
                continue
            env = " ".join(f"{k}={v}" for k, v in sorted(r["env"].items()))
            print(f"\n{r['model']}:\n  env  {env}\n  argv {' '.join(r['argv'])}")
    if unplaced:
        print(
            "\n" + "\n".join(f"cannot place {m}: {why}" for m, why in sorted(unplaced.items())),
            file=sys.stderr,
        )
        return 0 if args.allow_partial else 1
    return 0


def cmd_slices(args: argparse.Namespace) -> int:
    cfg = None
    if args.config and Path(args.config).exists():
        cfg = _load(args)
    inv = _inventory(args, cfg)
    if args.json:
        print(
            json.dumps(
                {
                    "source": inv.source,
                    "gpus": [
                        {
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
                        for g in inv.gpus
                    ],
                },
                indent=2,
            )
        )
        return 0
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
    print(_table(rows, ["GPU", "PROFILE", "GI", "CI", "MEMORY", "USED", "UUID"]))
    return 0


# ----- control-plane commands -----


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
    return _table(rows, header)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        models = [c.model(args.name)] if args.name else c.models()
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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_daemon_options(common)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
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

    p = argparse.ArgumentParser(prog="mig-orchestrator", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        "file, 1 for problems on this host (secrets, model paths, placement), 0 when all is well.",
    )
    s.add_argument(
        "--skip-secrets",
        action="store_true",
        help="skip files of this host: token and API key files, local model paths "
        "(for checking a copy away from the server)",
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

    s = sub.add_parser(
        "status", parents=[common], help="show models and engine states from the daemon"
    )
    s.add_argument("name", nargs="?", help="one model (default: all)")
    s.set_defaults(func=cmd_status)

    for verb, text in (
        ("start", "start a model's engine"),
        ("stop", "stop a model's engine"),
        ("restart", "restart a model's engine"),
    ):
        s = sub.add_parser(verb, parents=[common], help=text)
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

    for module in (
        "orchestrator.gpu.monitor",
        "orchestrator.tooling.cpu_venv",
        "orchestrator.bench.cli",
        "orchestrator.tooling.demo",
    ):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except PlacementError as e:
        print(f"cannot place every model (nothing was started):\n{e}", file=sys.stderr)
        return 2
    except ControlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except NvmlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
