"""`serve`: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from orchestrator.cli.options import config_options


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.daemon.serve import ServeOptions, serve

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        # Under systemd the journal stamps each line itself.
        format="%(levelname)s %(name)s: %(message)s"
        if os.environ.get("INVOCATION_ID")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    topology = Path(args.topology) if args.topology else None
    return serve(ServeOptions(Path(args.config), topology, args.allow_partial))


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve`."""
    s = sub.add_parser(
        "serve",
        parents=[config_options()],
        help="run the daemon in the foreground",
        description="Place every model on a slice, run and supervise its vLLM engine, "
        "and serve the control plane until SIGTERM. SIGHUP reloads models.toml.",
    )
    s.add_argument(
        "--allow-partial", action="store_true", help="start even if some models cannot be placed"
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=cmd_serve)
