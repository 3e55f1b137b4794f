"""`demo`: the whole daemon with real vLLM CPU engines on a simulated MIG host."""

from __future__ import annotations

import argparse

from orchestrator.tooling import cpu_venv, demo


def register(sub: argparse._SubParsersAction) -> None:
    """Add `demo`."""
    p = sub.add_parser(
        "demo",
        help="run the daemon with real vLLM CPU engines on a simulated MIG host (no GPU needed)",
        description=demo.__doc__,
    )
    p.add_argument(
        "--workdir",
        default=str(cpu_venv.cache_root() / "demo"),
        help="config, state and logs of the demo (default %(default)s)",
    )
    p.add_argument(
        "--students",
        type=int,
        choices=[1, 2, 3],
        default=2,
        help="how many students' engines (each wants about one CPU core while starting)",
    )
    p.add_argument("--base-port", type=int, default=8000, help="students get base+1, base+2, ...")
    p.add_argument("--control-port", type=int, default=8700)
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the engines")
    p.add_argument(
        "--exit-when-ready",
        action="store_true",
        help="stop everything once the engines are ready (a smoke test)",
    )
    p.set_defaults(func=demo.cmd_demo)
