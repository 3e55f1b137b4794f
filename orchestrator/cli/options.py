"""Options that several subcommand groups share: the config file, the topology, the daemon."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from orchestrator.client import add_daemon_options
from orchestrator.config import Config, load_config

DEFAULT_CONFIG = Path(os.environ.get("MIG_ORCH_CONFIG", "/etc/mig-orchestrator/models.toml"))


def config_options() -> argparse.ArgumentParser:
    """--config and --topology, shared by every command that reads models.toml on this host."""
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


def daemon_options() -> argparse.ArgumentParser:
    """--url, --token-file and --json, for every command that asks the daemon (and for plan)."""
    common = argparse.ArgumentParser(add_help=False)
    add_daemon_options(common)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return common


def load(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


def topology_of(args: argparse.Namespace, cfg: Config | None) -> Path | None:
    """--topology wins over the config's `topology`; None means the real driver."""
    topology = args.topology or (cfg.orchestrator.topology if cfg else None)
    return Path(topology) if topology else None
