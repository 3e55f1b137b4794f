"""`mig-orchestrator practicum`: the course's vLLM practicum on this machine, to one report."""

from __future__ import annotations

import argparse
import os

from orchestrator.practicum.plan import PRESETS

DESCRIPTION = """\
Run the course's vLLM practicum through the daemon on this machine and write one Markdown
report with its plots: two engines share the GPU (`coder` with prefix caching, `chat` without),
then a concurrency sweep with `monitor` beside it, the Ralph agent loop with prefix caching on
and off, `compare` across gpu_memory_utilization, our `bench` against `vllm bench serve`, and
crash-to-ready restart times. With --cpu it rehearses every step with vLLM's CPU build on a
simulated GPU, on any machine.

PHASE `all` (the default) runs up, serve, compare, restarts, down and report, prints its time
estimate first, always stops the daemon and exits non-zero when any step failed. The phases can
also run one by one against the same --results folder: `up` leaves the daemon running for the
next ones, `down` stops it, `report` renders RESULTS/report.md from what was measured."""

EPILOG = """\
examples:
  mig-orchestrator practicum --cpu --results practicum-cpu
  mig-orchestrator practicum --engine-venv /opt/mig-orchestrator/vllm-venv \\
      --model /srv/models/llama-1b --results practicum-h100
  mig-orchestrator practicum up --cpu --results r && mig-orchestrator practicum serve --cpu \\
      --results r && mig-orchestrator practicum down --results r && \\
      mig-orchestrator practicum report --results r"""


def _ports(text: str) -> tuple[int, int]:
    try:
        coder, chat = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"want CODER,CHAT ports, got {text!r}") from None
    if not all(0 < p < 65536 for p in (coder, chat)) or coder == chat:
        raise argparse.ArgumentTypeError(f"want two different ports in 1..65535, got {text!r}")
    return coder, chat


def _add_setup(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("set-up")
    g.add_argument("--cpu", action="store_true", help="rehearse with vLLM's CPU build")
    g.add_argument(
        "--results",
        default=os.environ.get("MIG_ORCH_RESULTS", "practicum-results"),
        help="results folder, also the daemon's home (default %(default)s; env MIG_ORCH_RESULTS)",
    )
    g.add_argument(
        "--engine-venv",
        default=os.environ.get("MIG_ORCH_ENGINE_VENV"),
        help="virtual environment with vLLM (default: $MIG_ORCH_ENGINE_VENV; with --cpu the "
        "CPU engine venv; else /opt/mig-orchestrator/vllm-venv when it exists)",
    )
    g.add_argument(
        "--model", help="model folder (with --cpu default: the tiny random-weight Llama)"
    )
    g.add_argument(
        "--ports", type=_ports, metavar="CODER,CHAT", help="engine ports (default: free ones)"
    )
    g.add_argument("--control-port", type=int, help="the daemon's port (default: a free one)")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="workload sizes (default: cpu with --cpu, else gpu)",
    )
    g.add_argument("--utilization", type=float, help="gpu_memory_utilization of each engine")
    g.add_argument("--max-model-len", type=int)
    g.add_argument("--ready-timeout", type=float, default=1200, help="seconds per engine start")
    g.add_argument("--engine-env", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument(
        "--engine-command",
        metavar="JSON",
        help="another OpenAI server program instead of vLLM's, as a JSON argv",
    )


def _add_workload(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("serve and compare (defaults from the preset)")
    g.add_argument("--levels", metavar="N,N,...", help="sweep concurrency levels")
    g.add_argument("--level-seconds", type=float, help="sweep: seconds per level")
    g.add_argument("--input-len", type=int, help="prompt tokens")
    g.add_argument("--output-len", type=int, help="output tokens (ignore_eos)")
    g.add_argument("--loops", type=int, help="Ralph: agent loops in parallel")
    g.add_argument("--iterations", type=int, help="Ralph: iterations per loop")
    g.add_argument("--vs-concurrency", type=int, help="bench vs vllm bench: concurrency")
    g.add_argument("--vs-prompts", type=int, help="bench vs vllm bench: prompts per run")
    g.add_argument("--rounds", type=int, help="bench vs vllm bench: pairs of runs")
    g.add_argument("--utilizations", metavar="U,U,...", help="compare: gpu_memory_utilization")
    g.add_argument("--compare-concurrency", type=int)
    g.add_argument("--compare-requests", type=int)


def _add_restarts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("restarts")
    g.add_argument(
        "--variant",
        action="append",
        metavar="LABEL:KEY=VALUE,...",
        help="restart settings to compare, as for `compare --variant` (default: "
        "plain:standby=false,engine_fork=false and default:standby=true; on CPU, where vLLM "
        "always spawns, plain:standby=false; a variant with standby off and no engine_fork is "
        "the baseline)",
    )
    g.add_argument("--repeat", type=int, default=1, help="crashes per variant")
    g.add_argument("--direct", action="store_true", help="also plain vLLM without the daemon")
    g.add_argument("--restart-model", default="chat")
    g.add_argument("--settle", type=float, default=0, help="seconds to wait before a crash")
    g.add_argument("--no-restore", action="store_true", help="leave the last variant running")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "practicum",
        help="run the course's vLLM practicum on this machine to one report (--cpu: rehearsal)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "phase",
        nargs="?",
        default="all",
        choices=("all", "up", "serve", "compare", "restarts", "down", "report"),
        help="default: all",
    )
    _add_setup(p)
    _add_workload(p)
    _add_restarts(p)
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from orchestrator.practicum.run import main

    return main(args)
