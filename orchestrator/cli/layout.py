"""`mig-orchestrator layout`: which MIG layout to create for the models in models.toml.

Estimates each model's memory offline, picks each one's profile, packs the instances onto the
fewest GPUs and prints the plan: a table (default), JSON, a nvidia-mig-parted config, the
`profile =` lines for models.toml, or a fake-NVML topology of the planned layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.cli.options import DEFAULT_CONFIG
from orchestrator.config import load_config
from orchestrator.gpu.inventory import Inventory
from orchestrator.gpu.mig_profiles import GPU_MODELS, PROFILE_TABLES, GpuModel, gpu_model
from orchestrator.gpu.nvml import Nvml, NvmlUnavailable
from orchestrator.layout import render
from orchestrator.layout.pack import plan_layout
from orchestrator.layout.plan import LayoutPlan
from orchestrator.layout.targets import Target, from_nvml, synthetic

FORMATS = ("table", "json", "mig-parted", "profiles", "topology")


def _gpu(text: str) -> GpuModel:
    try:
        return gpu_model(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _config_name(text: str) -> str:
    try:
        return render.check_config_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of GPUs >= 1, not {text!r}")
    return int(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `layout` subcommand."""
    labels = ", ".join(m.label for m in GPU_MODELS.values())
    p = sub.add_parser(
        "layout",
        help="plan the MIG layout for models.toml: profiles, packing, a mig-parted config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        "-c",
        default=str(DEFAULT_CONFIG),
        help="models.toml (env MIG_ORCH_CONFIG; default %(default)s)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--gpu", type=_gpu, metavar="MODEL", help=f"plan for GPUs of this model ({labels})"
    )
    source.add_argument(
        "--topology",
        help="plan for a simulated host: a topology file or a shipped name (default: NVML, "
        "or the config's topology)",
    )
    p.add_argument("--gpus", type=_count, metavar="N", help="how many GPUs of --gpu (default 1)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output (default table)")
    p.add_argument(
        "--json", dest="format", action="store_const", const="json", help="= --format json"
    )
    p.add_argument(
        "--name",
        type=_config_name,
        default=render.MIG_PARTED_NAME,
        help="config name in the mig-parted output, a node label value (default %(default)s)",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="print a mig-parted config even when some models are not placed (they are named)",
    )
    p.add_argument(
        "--topology-out",
        type=Path,
        metavar="FILE",
        help="also write the planned layout as a topology file (for plan/serve/demo --topology)",
    )
    p.add_argument(
        "--ignore-pins",
        action="store_true",
        help="ignore profile, min_memory_gib and slice: what the estimates alone would choose",
    )
    p.set_defaults(func=run)


def _targets(
    args: argparse.Namespace, topology: Path | None
) -> tuple[list[Target], list[str], Inventory | None]:
    if args.gpu is not None:
        return synthetic(args.gpu, args.gpus or 1), [], None
    try:
        with Nvml.open(topology) as nvml:
            return from_nvml(nvml)
    except NvmlUnavailable as e:
        raise NvmlUnavailable(f"{e} Or plan for GPUs to come: --gpu MODEL --gpus N.") from e


def render_plan(plan: LayoutPlan, fmt: str, name: str, source: str) -> str:
    if fmt == "mig-parted":
        return render.mig_parted(plan, name, source)
    if fmt == "topology":
        return render.topology(plan, source)
    return {"table": render.table, "json": render.to_json, "profiles": render.profile_lines}[fmt](
        plan
    )


def run(args: argparse.Namespace) -> int:
    if args.gpus is not None and args.gpu is None:
        print("error: --gpus needs --gpu MODEL", file=sys.stderr)
        return 2
    cfg = load_config(Path(args.config))
    topology = args.topology or cfg.orchestrator.topology
    targets, notes, inventory = _targets(args, Path(topology) if topology else None)
    if not targets:
        print(
            "error: no MIG-capable GPU to plan for here; name one with --gpu MODEL --gpus N"
            + "".join(f"\n  {n}" for n in notes),
            file=sys.stderr,
        )
        return 2
    plan = plan_layout(cfg, targets, inventory, pins=not args.ignore_pins)
    plan.notes[:0] = notes
    if args.format == "topology" or args.topology_out:
        unknown = sorted({g.target.model.key for g in plan.gpus} - set(PROFILE_TABLES))
        if unknown:
            print(f"error: no topology profile table for {', '.join(unknown)}", file=sys.stderr)
            return 2
    if plan.unplaced and args.format == "mig-parted":
        missing = "".join(f"\n  {n}: {why}" for n, why in sorted(plan.unplaced.items()))
        if not args.partial:
            # Applied, a config without them could turn MIG off on a GPU they needed.
            print(
                f"error: not every model is placed, so no mig-parted config is printed:{missing}"
                "\n--partial prints one without them",
                file=sys.stderr,
            )
            return 1
        print(
            f"warning: this config leaves out models that are not placed:{missing}", file=sys.stderr
        )
    print(render_plan(plan, args.format, args.name, args.config), end="")
    if args.topology_out:
        args.topology_out.write_text(render.topology(plan, args.config), encoding="utf-8")
    return 0 if plan.feasible else 1
