"""The `mig-orchestrator` command: run the daemon, check and plan a config, drive the daemon."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from orchestrator import __version__
from orchestrator.cli import local, remote
from orchestrator.client import ControlError, add_daemon_options
from orchestrator.config import ConfigError
from orchestrator.daemon.state_lock import StateDirBusy
from orchestrator.gpu.nvml import NvmlError
from orchestrator.placement import PlacementError

# Off the daemon's path: each adds its own subcommands through register(sub).
_TOOL_MODULES = (
    "orchestrator.gpu.monitor",
    "orchestrator.engine.nvml_check",
    "orchestrator.cli.layout",
    "orchestrator.tooling.cpu_venv",
    "orchestrator.cli.bench",
    "orchestrator.cli.k8s",
    "orchestrator.tooling.demo",
    "orchestrator.cli.keys",
    "orchestrator.cli.usage",
    "orchestrator.cli.requests_log",
)


def _register_tools(sub: argparse._SubParsersAction) -> None:
    for module in _TOOL_MODULES:
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.register(sub)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_daemon_options(common)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = argparse.ArgumentParser(prog="mig-orchestrator", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    local.register(sub, common)
    remote.register(sub, common)
    _register_tools(sub)
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
