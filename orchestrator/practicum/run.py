"""The practicum as one sequence (up, measurements, down, report) or one phase at a time.

The whole sequence always tears the daemon down, also after a failed step or Ctrl-C, and
always writes the report; it exits non-zero when any step failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from orchestrator.bench.compare import VariantError, parse_variant
from orchestrator.client import ControlError
from orchestrator.gpu.nvml import NO_TOPOLOGY_HINT, Nvml, NvmlError
from orchestrator.practicum import plan, report
from orchestrator.practicum.phases import phase_compare, phase_down, phase_serve, phase_up
from orchestrator.practicum.record import SESSION_DIR, PracticumError, Recorder
from orchestrator.practicum.restarts import phase_restarts
from orchestrator.practicum.session import Session
from orchestrator.tooling import cpu_venv

Phase = Callable[[argparse.Namespace, Recorder], None]
PHASES: dict[str, Phase] = {
    "up": phase_up,
    "serve": phase_serve,
    "compare": phase_compare,
    "restarts": phase_restarts,
    "down": phase_down,
}
MEASUREMENTS = ("serve", "compare", "restarts")
# Engine venv of a system install (deploy/install.sh puts vLLM there).
SYSTEM_ENGINE_VENV = Path("/opt/mig-orchestrator/vllm-venv")


def resolve_engine(args: argparse.Namespace) -> None:
    """Fill --engine-venv and --model: the CPU venv and tiny model for a rehearsal."""
    if args.engine_command:
        args.engine_venv = args.engine_venv or sys.prefix
        if not args.model:
            raise PracticumError("--engine-command needs --model")
        return
    if args.engine_venv is None:
        if args.cpu:
            args.engine_venv = str(cpu_venv.default_venv())
        elif SYSTEM_ENGINE_VENV.exists():
            args.engine_venv = str(SYSTEM_ENGINE_VENV)
        else:
            raise PracticumError(
                "give --engine-venv: the virtual environment with vLLM "
                f"(or ${cpu_venv.VENV_ENV_VAR}; a system install has {SYSTEM_ENGINE_VENV})"
            )
    venv = Path(args.engine_venv)
    if args.cpu:
        problem = cpu_venv.check_venv(venv)
        if problem is not None:
            raise PracticumError(
                f"the CPU engine venv {venv} is not usable ({problem}): "
                f"`mig-orchestrator engine install-cpu --venv {venv}` builds it"
            )
    if args.model is None:
        if not args.cpu:
            raise PracticumError(
                "give --model: a model folder (`mig-orchestrator engine build-tiny-model "
                "--shape llama-1b --venv VENV` builds a random-weight one)"
            )
        args.model = str(cpu_venv.build_tiny_model(venv, cpu_venv.default_tiny_model_dir()))


def check_gpu(args: argparse.Namespace) -> None:
    """Without --cpu the engines need an NVIDIA GPU: say so before anything starts."""
    if args.cpu or args.engine_command:
        return
    try:
        Nvml.open(None).close()
    except NvmlError as exc:
        why = str(exc).replace(NO_TOPOLOGY_HINT, "").strip()
        raise PracticumError(
            f"no usable NVIDIA GPU here ({why}); `mig-orchestrator practicum --cpu` rehearses "
            "every step with vLLM's CPU build on a simulated GPU"
        ) from None


def check_variants(args: argparse.Namespace) -> tuple[int, int]:
    """(variants, switches) of the restart comparison; a bad --variant fails before any start."""
    try:
        variants = [parse_variant(v) for v in args.variant]
    except (ValueError, VariantError) as exc:
        raise PracticumError(f"--variant: {exc}") from None
    # A variant restarts the engine for its overrides; standby alone is switched by a reload.
    return len(variants), sum(1 for v in variants if set(v.settings) - {"standby"})


def run_phase(args: argparse.Namespace, name: str) -> bool:
    """Run one phase; False when any of its steps failed (it is recorded, never raised)."""
    rec = Recorder(Path(args.results), name, sys.executable)
    try:
        PHASES[name](args, rec)
    except (ControlError, NvmlError, PracticumError, OSError, ValueError) as exc:
        rec.fail(name, f"{type(exc).__name__}: {exc}", time.monotonic() - rec.started)
    except KeyboardInterrupt:
        rec.fail(name, "interrupted (Ctrl-C or SIGTERM)", time.monotonic() - rec.started)
        raise
    if rec.failed:
        rec.say(f"FAILED: {', '.join(rec.failed)}")
    else:
        rec.say("done")
    return not rec.failed


def _daemon_alive(results: Path) -> bool:
    handle = results / SESSION_DIR / "session.json"
    return handle.exists() and Session.load(handle).alive()


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_all(args: argparse.Namespace, variants: int, switches: int) -> bool:
    """up, the measurements, down and the report; the daemon goes down whatever happened."""
    results = Path(args.results)
    phases = plan.estimate_all(args, variants, switches)
    total = sum(phases.values())
    parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in phases.items())
    print(f"[practicum] estimate {total / 60:.0f} min in all ({parts} min)", flush=True)
    ok = True
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        ok = run_phase(args, "up")
        for name in MEASUREMENTS if ok else ():
            ok = run_phase(args, name) and ok
    finally:
        try:
            if _daemon_alive(results):
                ok = run_phase(args, "down") and ok
        finally:
            signal.signal(signal.SIGTERM, previous)
            write_report(args)
    return ok


def write_report(args: argparse.Namespace) -> Path:
    out = Path(args.results) / "report.md"
    report.render(Path(args.results), out)
    print(f"[practicum] report: {out}", flush=True)
    return out


def main(args: argparse.Namespace) -> int:
    """The `mig-orchestrator practicum` command."""
    results = Path(args.results).expanduser().absolute()
    results.mkdir(parents=True, exist_ok=True)
    args.results = str(results)
    preset = plan.apply_preset(args)
    args.preset_name = args.preset or ("cpu" if args.cpu else "gpu")
    try:
        if args.phase != "report":
            variants, switches = check_variants(args)
        if args.phase in ("all", "up"):
            check_gpu(args)
        if args.phase in ("all", "up", "serve", "restarts"):
            resolve_engine(args)
    except PracticumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"[practicum] {args.phase} in {results} ({args.preset_name} preset, "
        f"load {os.getloadavg()[0]:.2f}, start times assumed {preset.cold_start_s:.0f} s cold, "
        f"{preset.warm_start_s:.0f} s warm)",
        flush=True,
    )
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores and args.phase != "report":
        print(
            f"[practicum] this machine is busy (load {load:.1f} on {cores} cores): every step "
            "will take longer than estimated, and its timings show that load",
            flush=True,
        )
    if args.phase == "report":
        write_report(args)
        return 0
    if args.phase == "all":
        return 0 if run_all(args, variants, switches) else 1
    return 0 if run_phase(args, args.phase) else 1
