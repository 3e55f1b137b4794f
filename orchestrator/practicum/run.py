"""The course's vLLM practicum on a real GPU, through our own tools, in phases of < 9 minutes.

    python -m orchestrator.practicum.run up       --results DIR --engine-venv V --model M
    python -m orchestrator.practicum.run serve    --results DIR    # (a) (b) (d) (f)
    python -m orchestrator.practicum.run compare  --results DIR    # (c)
    python -m orchestrator.practicum.run restarts --results DIR --variant fork:env=...
    python -m orchestrator.practicum.run down     --results DIR    # teardown record
    python -m orchestrator.practicum.run pack     --results DIR --dest $OUT

`up` starts one daemon (detached) with two engines sharing the GPU; every later phase reuses
it, because an engine start is the most expensive thing on the machine. Each phase prints its
time estimate first, runs `bench`, `compare`, `monitor` and `vllm bench serve` as commands, and
records every command (argv, seconds, exit code, output files) in DIR/commands.jsonl and every
engine launch's start-up breakdown in DIR/startups.jsonl; gpu_results.py renders them.
`--cpu` rehearses all of it with vLLM's CPU build on a simulated GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from orchestrator.client import ControlError
from orchestrator.practicum import session as gpu_session
from orchestrator.practicum import startup_phases as vllm_startup
from orchestrator.practicum.record import (
    COLD_START_S,
    SESSION_DIR,
    WARM_START_S,
    Recorder,
    json_line,
    record_startup,
    session_from,
    setup_from,
    watch_until_ready,
)
from orchestrator.practicum.restarts import phase_restarts
from orchestrator.practicum.session import REPO, Session


def cache_inventory() -> dict[str, Any]:
    """The caches a vLLM start leaves, and whether the systemd unit would keep them.

    The unit sets HOME=/var/lib/mig-orchestrator (a StateDirectory: kept across restarts) and
    PrivateTmp=yes (a fresh /tmp per service start): caches under HOME survive, /tmp ones not.
    """
    home = Path.home()
    candidates = [
        home / ".cache" / "vllm" / "torch_compile_cache",
        home / ".cache" / "vllm" / "flashinfer_autotune_cache",
        home / ".cache" / "vllm",
        home / ".cache" / "flashinfer",
        home / ".triton" / "cache",
        home / ".nv" / "ComputeCache",
        Path("/tmp") / f"torchinductor_{os.environ.get('USER', 'root')}",
    ]
    out = {}
    for path in candidates:
        if path.exists():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            kept = not str(path).startswith("/tmp")
            out[str(path)] = {"mib": round(size / 2**20, 1), "kept_by_unit": kept}
    return out


# --- phases ---------------------------------------------------------------------------------


def _random_workload(args: argparse.Namespace) -> list[str]:
    """The practicum's one workload, as `bench` and `compare` options."""
    return [
        "--workload",
        "random",
        "--input-len",
        str(args.input_len),
        "--max-tokens",
        str(args.output_len),
    ]


def phase_up(args: argparse.Namespace, rec: Recorder) -> None:
    rec.estimate(COLD_START_S + WARM_START_S + 30, "daemon start, coder (first: cold) then chat")
    setup = setup_from(args)
    root = Path(args.results) / SESSION_DIR
    started = time.time()
    session = gpu_session.start(setup, root, python=rec.python, src=rec.src, wait=False)
    rec.say(
        f"daemon pid {session.pid} at {session.url}; idle GPU memory {session.idle_memory_mib} MiB"
    )
    with session.client() as control:
        # The daemon starts the sharers one after the other, in config order.
        for order, name in enumerate(gpu_session.MODELS, 1):
            seen = watch_until_ready(control, name, None, args.ready_timeout, since=started)
            cache = (
                "first start here" if order == 1 else "second engine (caches warmed by the first)"
            )
            context = {"phase": "up", "order": order, "cache": cache}
            startup = record_startup(
                Path(args.results), session, name, context, seen["launched"], seen["ready"]
            )
            rec.say(f"{name} ready: {startup['phases']}")
    (rec.path("caches.json")).write_text(json.dumps(cache_inventory(), indent=2) + "\n")
    memory = gpu_session.gpu_memory_used_mib(session.topology)
    rec.record(
        "up",
        [rec.python, "-m", "orchestrator", "serve", "--config", str(session.config)],
        time.time() - started,
        0,
        [session.config, rec.path("caches.json")],
        gpu_memory_mib=memory,
        idle_memory_mib=session.idle_memory_mib,
    )


def phase_serve(args: argparse.Namespace, rec: Recorder) -> None:
    session = session_from(args)
    levels = args.levels
    sweep_s = len(levels.split(",")) * (args.level_seconds + 4) + 20
    vs_s = args.rounds * 2 * (12 + (8 if args.cpu else 35))
    rec.estimate(sweep_s + 40 + vs_s, "bench sweep + monitor, ralph on/off, bench vs vllm bench")
    url = ["--url", session.url]
    monitor = rec.orchestrator(
        "monitor", "--interval", "0.5", "--csv", str(rec.path("monitor.csv"))
    )
    if session.topology:
        monitor += ["--topology", session.topology]
    common = [*_random_workload(args), "-q"]
    sweep = rec.orchestrator(
        "bench",
        *url,
        "--model",
        "coder",
        *common,
        "--concurrency",
        levels,
        "--duration",
        str(args.level_seconds),
        "--warmup",
        "8",
        "--json",
        str(rec.path("sweep.json")),
        "--plot",
        str(rec.path("sweep.png")),
    )
    with rec.background("monitor", monitor, [rec.path("monitor.csv")]):
        rec.run("sweep", sweep, [rec.path("sweep.json"), rec.path("sweep.png")], 600)
    for model, label in (("coder", "ralph-on"), ("chat", "ralph-off")):
        ralph = rec.orchestrator(
            "bench",
            *url,
            "--model",
            model,
            "--workload",
            "ralph",
            "--loops",
            str(args.loops),
            "--iterations",
            str(args.iterations),
            "--max-tokens",
            str(args.output_len),
            "-q",
            "--json",
            str(rec.path(f"{label}.json")),
        )
        rec.run(label, ralph, [rec.path(f"{label}.json")], 300)
    coder = session.ports["coder"]
    versus = [
        rec.python,
        # as a module from the checkout: a script path would import the installed orchestrator
        "-m",
        "tests.perf.bench_vs_vllm",
        "--target",
        f"http://127.0.0.1:{coder}",
        "--served-model-name",
        "coder",
        "--tokenizer",
        str(args.model),
        "--engine-venv",
        str(args.engine_venv),
        "--input-len",
        str(args.input_len),
        "--output-len",
        str(args.output_len),
        "--concurrency",
        str(args.vs_concurrency),
        "--num-prompts",
        str(args.vs_prompts),
        "--rounds",
        str(args.rounds),
        "--json",
        str(rec.path("bench-vs-vllm.json")),
    ]
    rec.run("bench-vs-vllm", versus, [rec.path("bench-vs-vllm.json")], 500)


def _kv_by_utilization(session: Session, name: str) -> list[dict[str, Any]]:
    """KV-cache figures of every launch in the model's log, with the utilisation it ran at."""
    out: list[dict[str, Any]] = []
    log = session.engine_log(name).splitlines()
    runs = vllm_startup.launches(log)
    argvs = [argv for ln in log if (argv := vllm_startup.start_argv(ln)) is not None]
    for argv, lines in zip(argvs, runs, strict=True):
        gmu = (
            argv[argv.index("--gpu-memory-utilization") + 1]
            if ("--gpu-memory-utilization" in argv)
            else None
        )
        startup = vllm_startup.parse(lines)
        out.append({"gpu_memory_utilization": gmu, **startup.figures})
    return out


def phase_compare(args: argparse.Namespace, rec: Recorder) -> None:
    session = session_from(args)
    values = args.utilizations.split(",")
    rec.estimate(
        (len(values) + 1) * (WARM_START_S + 15),
        f"compare chat at gpu_memory_utilization {args.utilizations} (+1 restart to restore)",
    )
    compare = rec.orchestrator(
        "compare",
        "--url",
        session.url,
        "--model",
        "chat",
        "--sweep",
        f"gpu_memory_utilization={args.utilizations}",
        *_random_workload(args),
        "--concurrency",
        str(args.compare_concurrency),
        "--requests",
        str(args.compare_requests),
        "-q",
        "--json",
        str(rec.path("compare.json")),
        "--plot",
        str(rec.path("compare.png")),
    )
    mark = len(vllm_startup.launches(session.engine_log("chat").splitlines()))
    rec.run("compare", compare, [rec.path("compare.json"), rec.path("compare.png")], 560)
    kv = _kv_by_utilization(session, "chat")
    rec.path("kv.json").write_text(json.dumps(kv, indent=2) + "\n")
    for i, lines in enumerate(vllm_startup.launches(session.engine_log("chat").splitlines())):
        if i >= mark:
            startup = vllm_startup.parse(lines)
            json_line(
                Path(args.results) / "startups.jsonl",
                {
                    "model": "chat",
                    "phase": "compare",
                    "order": i + 1,
                    "cache": "warm restart",
                    **startup.to_json(),
                },
            )


def phase_down(args: argparse.Namespace, rec: Recorder) -> None:
    rec.estimate(40, "SIGTERM the daemon; leftovers and GPU memory after")
    session = session_from(args)
    result = session.stop()
    rec.path("teardown.json").write_text(json.dumps(result, indent=2) + "\n")
    rec.record(
        "down",
        ["kill", "-TERM", str(session.pid)],
        result["exit_s"],
        0,
        [rec.path("teardown.json")],
    )
    rec.say(f"teardown: {result}")


def phase_pack(args: argparse.Namespace, rec: Recorder) -> None:
    """Everything measured so far as one tar.gz in --dest ($OUT: at most 8 files come back)."""
    results = Path(args.results)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"practicum-{time.strftime('%H%M%S')}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        tar.add(results, arcname="results")
    rec.say(f"packed {results} into {target} ({target.stat().st_size / 1e6:.1f} MB)")


PHASES = {
    "up": phase_up,
    "serve": phase_serve,
    "compare": phase_compare,
    "restarts": phase_restarts,
    "down": phase_down,
    "pack": phase_pack,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.practicum.run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("phase", choices=PHASES)
    p.add_argument(
        "--results",
        default=os.environ.get("MIG_ORCH_RESULTS", "results"),
        help="results folder, also the daemon's home (env MIG_ORCH_RESULTS)",
    )
    p.add_argument(
        "--engine-venv",
        default=os.environ.get("MIG_ORCH_CUDA_VENV"),
        help="vLLM environment (env MIG_ORCH_CUDA_VENV)",
    )
    p.add_argument(
        "--model",
        default=os.environ.get("MIG_ORCH_GPU_MODEL"),
        help="model folder (env MIG_ORCH_GPU_MODEL)",
    )
    p.add_argument("--cpu", action="store_true", help="rehearse with vLLM's CPU build")
    p.add_argument(
        "--engine-command",
        metavar="JSON",
        help="another engine instead of vLLM, as a JSON argv (the tests' stand-in)",
    )
    p.add_argument("--engine-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--utilization", type=float, default=0.40)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--ready-timeout", type=float, default=900)
    g = p.add_argument_group("serve")
    g.add_argument("--levels", default="1,2,4,8,16,32,64,128,256")
    g.add_argument("--level-seconds", type=float, default=8)
    g.add_argument("--input-len", type=int, default=512)
    g.add_argument("--output-len", type=int, default=128)
    g.add_argument("--loops", type=int, default=4)
    g.add_argument("--iterations", type=int, default=8)
    g.add_argument("--vs-concurrency", type=int, default=32)
    # 320 prompts ran 5 s on the H200: ramp-up and drain alone set the tools ~6 % apart
    g.add_argument("--vs-prompts", type=int, default=2000)
    g.add_argument("--rounds", type=int, default=2, help="bench vs vllm bench: rounds each")
    g = p.add_argument_group("compare")
    g.add_argument("--utilizations", default="0.06,0.12,0.40")
    g.add_argument("--compare-concurrency", type=int, default=256)
    g.add_argument("--compare-requests", type=int, default=768)
    g = p.add_argument_group("restarts")
    g.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE,...",
        help="restart overrides to compare, as for `compare --variant`, e.g. "
        '\'fork:env={"VLLM_WORKER_MULTIPROC_METHOD":"fork"}\' (default: daemon:)',
    )
    g.add_argument("--repeat", type=int, default=1, help="crashes per variant")
    g.add_argument("--direct", action="store_true", help="also plain vLLM without the daemon")
    g.add_argument("--restart-model", default="chat")
    g.add_argument("--settle", type=float, default=0, help="seconds to wait before a crash")
    g.add_argument("--no-restore", action="store_true", help="leave the last variant running")
    p.add_argument("--dest", default=os.environ.get("OUT", "."), help="pack: where to")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    results = Path(args.results).absolute()
    results.mkdir(parents=True, exist_ok=True)
    args.results = str(results)
    if args.phase in ("up", "serve", "restarts") and not (args.engine_venv and args.model):
        raise SystemExit(
            "give --engine-venv and --model (or MIG_ORCH_CUDA_VENV, MIG_ORCH_GPU_MODEL)"
        )
    rec = Recorder(results, args.phase, REPO, sys.executable)
    try:
        PHASES[args.phase](args, rec)
    except ControlError as exc:
        rec.say(f"error: {exc}")
        return 1
    rec.say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
