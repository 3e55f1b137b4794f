"""How big each practicum step is, per device, and how long it should take.

Two presets: `gpu` sized for one whole datacenter GPU (the figures behind its start-up times
are in docs/gpu-results.md: a cold first start of 233-257 s on an H200, 63-77 s warm), and `cpu`,
a quick rehearsal with vLLM's CPU build on two cores (engine starts of 40-90 s, depending on
what else runs). Any option given on the command line replaces the preset's value.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

PHASES = ("up", "serve", "compare", "restarts", "down", "report")


@dataclass(frozen=True)
class Preset:
    """Workload sizes and the engine start times the estimates assume."""

    levels: str
    level_seconds: float
    input_len: int
    output_len: int
    loops: int
    iterations: int
    vs_concurrency: int
    vs_prompts: int
    rounds: int
    utilizations: str
    compare_concurrency: int
    compare_requests: int
    max_model_len: int
    utilization: float
    cold_start_s: float
    warm_start_s: float
    # Restart variants; `plain` (no standby, vLLM's spawn) is the baseline of the others.
    variant: tuple[str, ...]


PRESETS = {
    "gpu": Preset(
        levels="1,2,4,8,16,32,64,128,256",
        level_seconds=8,
        input_len=512,
        output_len=128,
        loops=4,
        iterations=8,
        vs_concurrency=32,
        # 320 prompts took 5 s on an H200: ramp-up and drain alone set the tools ~6 % apart.
        vs_prompts=2000,
        rounds=3,
        utilizations="0.06,0.12,0.40",
        compare_concurrency=256,
        compare_requests=768,
        max_model_len=4096,
        utilization=0.40,
        cold_start_s=260,
        warm_start_s=75,
        variant=("plain:standby=false,engine_fork=false", "default:standby=true"),
    ),
    "cpu": Preset(
        levels="1,2,4",
        level_seconds=6,
        input_len=64,
        output_len=32,
        loops=2,
        iterations=3,
        vs_concurrency=4,
        vs_prompts=16,
        rounds=1,
        utilizations="0.2,0.4",
        compare_concurrency=4,
        compare_requests=12,
        max_model_len=2048,
        utilization=0.40,
        cold_start_s=90,
        warm_start_s=70,
        # vLLM's CPU platform always spawns its EngineCore: switching standby is a reload, and
        # no variant costs an engine start of its own.
        variant=("plain:standby=false", "default:standby=true"),
    ),
}


def apply_preset(args: argparse.Namespace) -> Preset:
    """Fill every option left unset (None) from the device's preset; the preset used."""
    preset = PRESETS[args.preset or ("cpu" if args.cpu else "gpu")]
    for key, value in asdict(preset).items():
        if getattr(args, key, None) is None:
            setattr(args, key, list(value) if isinstance(value, tuple) else value)
    return preset


def estimate_up(args: argparse.Namespace) -> float:
    return float(args.cold_start_s + args.warm_start_s + 20)


def estimate_serve(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per step of `serve` (sweep with monitor, Ralph on and off, vs vllm bench)."""
    levels = len(args.levels.split(","))
    per_request = 0.05 * args.output_len if args.cpu else 0.01 * args.output_len
    ralph = args.iterations * (per_request + 2) + 10
    versus = args.rounds * 2 * (args.vs_prompts / args.vs_concurrency * per_request + 15) + 20
    return {
        "sweep": levels * (args.level_seconds + 6) + 15,
        "ralph-on": ralph,
        "ralph-off": ralph,
        "bench-vs-vllm": versus,
    }


def estimate_compare(args: argparse.Namespace) -> float:
    variants = len(args.utilizations.split(","))
    per_request = 0.05 * args.output_len if args.cpu else 0.01 * args.output_len
    bench = args.compare_requests / args.compare_concurrency * per_request + 10
    return (variants + 1) * args.warm_start_s + variants * bench


def estimate_restarts(args: argparse.Namespace, variants: int, switches: int) -> float:
    """Engine starts: a crash each, a restart per variant with overrides, plain vLLM by hand."""
    starts = switches + variants * args.repeat + (args.repeat if args.direct else 0)
    starts += 0 if args.no_restore or not switches else 1
    return float(starts * (args.warm_start_s + 10))


def estimate_all(args: argparse.Namespace, variants: int, switches: int) -> dict[str, float]:
    """Seconds per phase of the whole sequence."""
    return {
        "up": estimate_up(args),
        "serve": sum(estimate_serve(args).values()),
        "compare": estimate_compare(args),
        "restarts": estimate_restarts(args, variants, switches),
        "down": 30.0,
        "report": 5.0,
    }
