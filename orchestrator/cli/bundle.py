"""`engine bundle`: the offline bundle builder's options (stdlib and pip only, like the builder)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.bundle import build
from orchestrator.bundle.build import REPO, Builder, BundleError, Options, default_cache
from orchestrator.bundle.pack import parse_size
from orchestrator.bundle.resolve import Policy, ResolveError
from orchestrator.bundle.target import (
    Requirement,
    Target,
    TargetError,
    canonicalize_name,
    read_installed,
)
from orchestrator.bundle.wheel import WheelError


def _key_value(flag: str, text: str) -> tuple[str, str]:
    key, _, value = text.partition(":" if flag == "--drop-file" else "=")
    if not key.strip() or (flag == "--drop-file" and not value.strip()):
        raise BundleError(
            f"{flag} {text!r}: want "
            + ("PACKAGE:GLOB" if flag == "--drop-file" else "NAME[=REASON]")
        )
    return canonicalize_name(key.strip()), value.strip()


def options(args: argparse.Namespace) -> Options:
    """Turn parsed arguments into Options; every bad value is a BundleError naming its flag."""
    try:
        installed = read_installed(Path(args.target_packages))
        target = Target.parse(args.python_version, args.platform, installed)
        engine = [] if args.no_engine else [Requirement(r) for r in args.engine or ["vllm"]]
        overrides = {str(canonicalize_name(r.name)): r for r in map(Requirement, args.override)}
    except (TargetError, ValueError) as exc:
        raise BundleError(str(exc)) from None
    exclude = dict(_key_value("--exclude", e) for e in args.exclude)
    exclude = {n: why or "excluded with --exclude" for n, why in exclude.items()}
    drop: dict[str, list[str]] = {}
    for spec in args.drop_file:
        name, glob = _key_value("--drop-file", spec)
        drop.setdefault(name, []).append(glob)
    try:
        part_size = parse_size(args.part_size)
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    return Options(
        out=Path(args.out).absolute(),
        target=target,
        target_file=Path(args.target_packages),
        engine=engine,
        policy=Policy(
            overrides=overrides,
            exclude=exclude,
            replace=frozenset(canonicalize_name(n) for n in args.replace),
        ),
        drop=drop,
        part_size=part_size,
        cache=Path(args.cache).expanduser().absolute() if args.cache else default_cache(),
        pip_args=list(args.pip_arg),
        daemon_source=None if args.no_daemon else Path(args.source).absolute(),
        daemon_extras=list(args.daemon_extra),
        check_imports=list(args.check_import),
        with_pip=not args.no_pip,
        strict=args.strict,
        xz_preset=args.xz_preset,
        dry_run=args.dry_run,
    )


def _cmd_bundle(args: argparse.Namespace) -> int:
    if args.no_engine and args.no_daemon:
        print("error: --no-engine and --no-daemon leave nothing to bundle", file=sys.stderr)
        return 2
    try:
        manifest = Builder(options(args)).build()
    except (BundleError, ResolveError, WheelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "bundle_id": manifest["bundle_id"],
                "out": str(args.out),
                "parts": manifest["archive"]["parts"],
            }
        )
    )
    return 0


def _arg_lines(line: str) -> list[str]:
    """@FILE lines: `--flag value with spaces`, one option per line; `#` starts a comment."""
    flag, _, value = line.split("#", 1)[0].strip().partition(" ")
    return [flag, value.strip()] if value.strip() else [flag] if flag else []


def add_bundle(actions: argparse._SubParsersAction) -> None:
    """Add `engine bundle` to the engine subcommands."""
    p = actions.add_parser(
        "bundle",
        help="build an offline bundle: vLLM + what the target lacks, plus the daemon",
        description=(build.__doc__ or "").split("\n\n")[1]
        + " Options can come from @FILE (one per line).",
    )
    # A recipe file (deploy/targets/*.args) keeps a target's decisions, with comments, in one
    # reviewable place: `engine bundle @deploy/targets/h200-cuda.args --out DIR`.
    p.fromfile_prefix_chars = "@"
    p.convert_arg_line_to_args = _arg_lines
    p.add_argument("--out", required=True, help="output folder (parts, bundle.json, install.py)")
    p.add_argument(
        "--target-packages",
        required=True,
        metavar="FILE",
        help="`pip freeze` or `pip list` output of the target environment",
    )
    p.add_argument("--python-version", required=True, metavar="3.X.Y", help="target Python")
    p.add_argument(
        "--platform",
        required=True,
        metavar="manylinux_2_N_ARCH",
        help="target glibc and architecture, e.g. manylinux_2_35_x86_64",
    )
    _add_contents(p)
    _add_build(p)
    p.set_defaults(func=_cmd_bundle)


def _add_contents(p: argparse.ArgumentParser) -> None:
    """What goes into the bundle and what stays out."""
    p.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="REQ",
        help="engine requirement, e.g. vllm==0.26.0 (repeatable)",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="REQ",
        help="replaces every requirement on that package, e.g. xgrammar==0.2.8",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="NAME[=WHY]",
        help="leave a package (and what only it needs) out",
    )
    p.add_argument(
        "--replace",
        action="append",
        default=[],
        metavar="NAME",
        help="ship NAME although the target has it (shadows the target's)",
    )
    p.add_argument(
        "--drop-file",
        action="append",
        default=[],
        metavar="PACKAGE:GLOB",
        help="leave files out of a wheel, e.g. vllm:vllm/vllm_flash_attn/_vllm_fa2_C*",
    )


def _add_build(p: argparse.ArgumentParser) -> None:
    """How the bundle is built and checked."""
    p.add_argument(
        "--check-import",
        action="append",
        default=[],
        metavar="MODULE",
        help="module the installer imports to prove the engine works",
    )
    p.add_argument("--part-size", default="0", help="split the archive, e.g. 58M (0: one part)")
    p.add_argument("--xz-preset", type=int, default=6, choices=range(10), metavar="0-9")
    p.add_argument("--cache", help=f"wheel download cache (default {default_cache()})")
    p.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `pip download` argument, e.g. --index-url=URL (repeatable)",
    )
    p.add_argument("--source", default=str(REPO), help="daemon project (default: this one)")
    p.add_argument(
        "--daemon-extra",
        action="append",
        default=[],
        metavar="EXTRA",
        help="daemon extra to include, e.g. plot (matplotlib)",
    )
    p.add_argument("--no-daemon", action="store_true", help="engine only")
    p.add_argument("--no-engine", action="store_true", help="daemon only (engines from elsewhere)")
    p.add_argument("--dry-run", action="store_true", help="resolve and list; write no bundle")
    p.add_argument("--no-pip", action="store_true", help="use the target's pip to install")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail when a target version does not satisfy a requirement",
    )
