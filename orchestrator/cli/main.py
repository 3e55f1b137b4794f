"""The `mig-orchestrator` command: run the daemon, check and plan a config, drive the daemon."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from orchestrator import __version__
from orchestrator.client import ControlError
from orchestrator.config import ConfigError
from orchestrator.daemon.state_lock import StateDirBusy
from orchestrator.gpu.nvml import NvmlError
from orchestrator.placement import PlacementError

# The modules of orchestrator/cli/ that add subcommands, each through register(sub), in the
# order `--help` lists them; a new group is one more line here.
GROUPS = (
    "daemon",
    "config",
    "models",
    "gpu",
    "layout",
    "engine",
    "bench",
    "eval",
    "demo",
    "k8s",
    "keys",
    "usage",
    "practicum",
    "requests_log",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mig-orchestrator", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"orchestrator.cli.{group}").register(sub)
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
    except StateDirBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
