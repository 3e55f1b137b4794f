"""`slices`, `monitor` and `nvml-check`: what the GPUs and their MIG slices are and do."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from orchestrator.cli.options import config_options, daemon_options, load, topology_of
from orchestrator.engine import nvml_check
from orchestrator.gpu import monitor
from orchestrator.gpu.inventory import Gpu, Inventory
from orchestrator.gpu.nvml import load_inventory
from orchestrator.text_table import render_table
from orchestrator.units import gib_text


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
            gib_text(s.memory_total_bytes),
            gib_text(s.memory_used_bytes),
            s.uuid,
        ]
        for s in inv.slices
    ]
    print(f"source: {inv.source}")
    for g in inv.gpus:
        print(
            f"GPU{g.index}: {g.name} {g.uuid} MIG {'on' if g.mig_enabled else 'off'}, "
            f"{gib_text(g.memory_total_bytes)}"
        )
        if g.mig_enabled and not g.slices:
            print(
                f"  note: MIG is enabled on GPU{g.index} but it has no MIG devices, so nothing can "
                "run there: create instances (nvidia-smi mig -cgi ... -C) or disable MIG"
            )
    print(render_table(["GPU", "PROFILE", "GI", "CI", "MEMORY", "USED", "UUID"], rows))


def cmd_slices(args: argparse.Namespace) -> int:
    cfg = load(args) if args.config and Path(args.config).exists() else None
    inv = load_inventory(topology_of(args, cfg))
    if args.json:
        doc = {"source": inv.source, "gpus": [_gpu_json(g) for g in inv.gpus]}
        print(json.dumps(doc, indent=2))
    else:
        _print_slices(inv)
    return 0


def _add_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="sample GPU telemetry and per-slice memory, like nvidia-smi dmon",
        description=monitor.__doc__,
    )
    p.add_argument(
        "--topology",
        type=Path,
        metavar="TOPOLOGY",
        help="fake GPU topology (file or shipped name) instead of the driver",
    )
    p.add_argument(
        "--interval", type=_seconds, default=1.0, metavar="S", help="seconds between samples (1)"
    )
    p.add_argument(
        "--count", type=_count, default=0, metavar="N", help="stop after N samples (0: until ^C)"
    )
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write every row to a CSV file")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON lines (one per GPU per sample, slices nested)",
    )
    p.add_argument(
        "--per-slice", action="store_true", help="add a memory row per slice (table and CSV)"
    )
    p.set_defaults(func=monitor.run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {text!r}")
    return int(text)


def _add_nvml_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nvml-check",
        help="show where vLLM's NVML lookups land for each slice, with and without the MIG fix",
        description=nvml_check.__doc__,
    )
    p.add_argument("uuid", nargs="*", help="GPU or MIG UUIDs (default: every slice)")
    p.add_argument(
        "--topology",
        type=Path,
        metavar="TOPOLOGY",
        help="fake GPU topology (file or shipped name) instead of the driver",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=nvml_check.run)


def _add_slices(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "slices",
        parents=[config_options(), daemon_options()],
        help="list GPUs and MIG slices (NVML or --topology)",
    )
    s.set_defaults(func=cmd_slices)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `slices`, `monitor` and `nvml-check`."""
    _add_slices(sub)
    _add_monitor(sub)
    _add_nvml_check(sub)
