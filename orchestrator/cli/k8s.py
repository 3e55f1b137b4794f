"""`mig-orchestrator k8s render`: the same models.toml as a kustomize directory for a cluster.

Per model a Deployment and Service on its MIG resource; the course's NVML fix, NetworkPolicy,
PodMonitor and (when enabled) gateway; the layout planner's mig-parted config for the GPU
operator. Options override the [kubernetes] table. --check renders in memory, checks every
object and compares with --out; it writes nothing.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.config import load_config, read_config_text
from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.k8s import checks, write
from orchestrator.k8s.render import Rendered, RenderError, render

_POOL = re.compile(r"^([a-z][-a-z0-9]*)=([^:]+):([0-9]+)(?::([0-9]+))?$")


def _pool(text: str) -> tuple[str, dict[str, Any]]:
    found = _POOL.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write NAME=GPU:GPUS_PER_NODE[:NODES], e.g. course=H100-80GB:8:2"
        )
    name, gpu, gpus, nodes = found.groups()
    return name, {"gpu": gpu, "gpus": int(gpus), "nodes": int(nodes or 1)}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `k8s render`."""
    from orchestrator.cli.options import DEFAULT_CONFIG

    group = sub.add_parser("k8s", help="deploy models.toml on Kubernetes (GPU operator, MIG)")
    verbs = group.add_subparsers(dest="k8s_command", required=True, metavar="VERB")
    p = verbs.add_parser(
        "render",
        help="write a kustomize directory of manifests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", "-c", default=str(DEFAULT_CONFIG), help="models.toml (env MIG_ORCH_CONFIG)"
    )
    p.add_argument(
        "--out", "-o", type=Path, default=Path("k8s"), help="directory (default %(default)s)"
    )
    p.add_argument("--check", action="store_true", help="check, compare with --out, write nothing")
    p.add_argument("--namespace", help="kubernetes.namespace")
    p.add_argument("--image", help="kubernetes.image: the vLLM image, with its tag")
    p.add_argument("--model-cache", metavar="CLAIM", help="kubernetes.model_cache.claim")
    p.add_argument(
        "--pool",
        type=_pool,
        action="append",
        metavar="NAME=GPU:GPUS[:NODES]",
        help="a MIG node pool (repeat; replaces kubernetes.node_pools)",
    )
    p.set_defaults(func=run)


def settings(table: KubernetesSettings | None, args: argparse.Namespace) -> KubernetesSettings:
    """The [kubernetes] table with the command line's options on top."""
    data = (table or KubernetesSettings()).model_dump(exclude_unset=True)
    if args.namespace is not None:
        data["namespace"] = args.namespace
    if args.image is not None:
        data["image"] = args.image
    if args.model_cache is not None:
        data["model_cache"] = {**(data.get("model_cache") or {}), "claim": args.model_cache}
    if args.pool:
        data["node_pools"] = dict(args.pool)
    return KubernetesSettings.model_validate(data)


def run(args: argparse.Namespace) -> int:
    path = Path(args.config)
    cfg = load_config(path)
    try:
        k8s = settings(cfg.kubernetes, args)
    except ValidationError as e:
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            print(f"{path}: kubernetes.{where}: {msg}", file=sys.stderr)
        return 2
    try:
        rendered = render(cfg, k8s, str(path), read_config_text(path))
    except RenderError as e:
        print(f"{path}: cannot render for Kubernetes:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in e.errors), file=sys.stderr)
        return 2
    problems = checks.consistency(rendered)
    files = write.texts(rendered, str(path))
    if args.check:
        return _check(rendered, files, args.out, problems)
    if problems:
        print(
            "\n".join(["rendered objects disagree (nothing written):", *problems]), file=sys.stderr
        )
        return 1
    removed = write.write(args.out, files)
    for p in removed:
        print(f"removed {p} (no longer rendered)")
    print(f"wrote {len(files)} files to {args.out}; next: {args.out / write.README}")
    return 0


def _check(rendered: Rendered, files: dict[str, str], out: Path, problems: list[str]) -> int:
    try:
        errors, notes = checks.schema(rendered)
    except ModuleNotFoundError:
        errors, notes = [], ["schemas not checked: pip install 'mig-orchestrator[k8s]'"]
    compared = out.is_dir()
    if compared:
        errors += write.differences(out, files)
    else:
        notes.append(f"{out} not compared: it does not exist")
    problems = problems + errors
    for note in notes:
        print(f"note: {note}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(
        f"ok: {len(rendered.objects())} objects pass"
        + (f"; {out} is up to date" if compared else "")
    )
    return 0
