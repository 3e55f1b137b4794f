"""The course's vLLM practicum on a real GPU, through our own tools, in phases of < 9 minutes.

    python -m orchestrator.tooling.practicum up       --results DIR --engine-venv V --model M
    python -m orchestrator.tooling.practicum serve    --results DIR    # (a) (b) (d) (f)
    python -m orchestrator.tooling.practicum compare  --results DIR    # (c)
    python -m orchestrator.tooling.practicum restarts --results DIR --variant fork:env=...
    python -m orchestrator.tooling.practicum down     --results DIR    # teardown record
    python -m orchestrator.tooling.practicum pack     --results DIR --dest $OUT

`up` starts one daemon (detached) with two engines sharing the GPU; every later phase reuses
it, because an engine start is the most expensive thing on the machine. Each phase prints its
time estimate first, runs `bench`, `compare`, `monitor` and `vllm bench serve` as commands, and
records every command (argv, seconds, exit code, output files) in DIR/commands.jsonl and every
engine launch's start-up breakdown in DIR/startups.jsonl; gpu_results.py renders them.
`--cpu` rehearses all of it with vLLM's CPU build on a simulated GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from orchestrator.bench.compare import ThreadedControl, parse_variant, restart_and_wait
from orchestrator.control.client import ControlClient, ControlError
from orchestrator.tooling import gpu_session, vllm_startup
from orchestrator.tooling.gpu_session import REPO, Session, Setup

SESSION_DIR = "session"
# Seconds per warm engine start on the H200 (gpu-vllm.md: 63-77 s); the first start of a fresh
# machine pays compile, JIT and byte-code too.
WARM_START_S = 75.0
COLD_START_S = 200.0


def _json_line(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


class Recorder:
    """Runs the phase's commands and writes down what ran, for how long, and what it wrote."""

    def __init__(self, results: Path, phase: str, src: Path, python: str) -> None:
        self.results = results
        self.phase = phase
        self.dir = results / phase
        self.dir.mkdir(parents=True, exist_ok=True)
        self.src = src
        self.python = python
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[practicum {self.phase} +{elapsed:5.0f}s] {text}", flush=True)

    def estimate(self, seconds: float, what: str) -> None:
        flag = "" if seconds <= 540 else "  (over 9 min: split it, see --help)"
        self.say(f"estimate {seconds / 60:.1f} min: {what}{flag}")

    def path(self, name: str) -> Path:
        return self.dir / name

    def record(
        self,
        label: str,
        argv: list[str],
        seconds: float,
        code: int | None,
        outputs: list[Path],
        **extra: Any,
    ) -> None:
        _json_line(
            self.results / "commands.jsonl",
            {
                "phase": self.phase,
                "label": label,
                "argv": argv,
                "command": shlex.join(argv),
                "seconds": round(seconds, 1),
                "exit_code": code,
                "outputs": [str(p.relative_to(self.results)) for p in outputs if p.exists()],
                "at": time.time(),
                **extra,
            },
        )

    def run(self, label: str, argv: list[str], outputs: list[Path], timeout: float) -> int:
        """Run a command to completion, its output in PHASE/LABEL.log; never raises on failure."""
        self.say(f"{label}: {shlex.join(argv)}")
        started = time.monotonic()
        with self.path(f"{label}.log").open("w") as log:
            try:
                code = subprocess.run(
                    argv,
                    cwd=self.src,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
        seconds = time.monotonic() - started
        self.record(label, argv, seconds, code, [*outputs, self.path(f"{label}.log")])
        self.say(f"{label}: exit {code} after {seconds:.0f} s")
        return -1 if code is None else code

    @contextmanager
    def background(self, label: str, argv: list[str], outputs: list[Path]) -> Iterator[None]:
        """A command that runs while the block runs (monitor), stopped with SIGINT after it."""
        self.say(f"{label} (background): {shlex.join(argv)}")
        started = time.monotonic()
        with self.path(f"{label}.log").open("w") as log:
            proc = subprocess.Popen(argv, cwd=self.src, stdout=log, stderr=subprocess.STDOUT)
            try:
                yield
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    code: int | None = proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
        self.record(
            label,
            argv,
            time.monotonic() - started,
            code,
            [*outputs, self.path(f"{label}.log")],
            background=True,
        )

    def orchestrator(self, *args: str) -> list[str]:
        return [self.python, "-m", "orchestrator", *args]


# --- engine start-ups -----------------------------------------------------------------------


def process_start(pid: int) -> float | None:
    """When a process started (epoch seconds), from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, IndexError):
        return None
    return boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")


def record_startup(
    results: Path,
    session: Session,
    name: str,
    context: dict[str, Any],
    launched: float | None,
    ready: float | None,
) -> dict[str, Any]:
    """Parse the model's latest launch from its engine log and append it to startups.jsonl."""
    startup = vllm_startup.latest(session.engine_log(name), launched=launched, ready=ready)
    record = {"model": name, **context, **startup.to_json()}
    _json_line(results / "startups.jsonl", record)
    return record


def watch_until_ready(
    control: ControlClient,
    name: str,
    old_pid: int | None,
    timeout: float,
    since: float | None = None,
) -> dict[str, Any]:
    """Poll a model until a new engine (pid != old_pid) is ready; times of each step seen."""
    since = time.time() if since is None else since
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = control.model(name)
        now = time.time()
        state, pid = status["state"], status.get("pid")
        if state != "ready" and "left_ready_s" not in seen:
            seen["left_ready_s"] = round(now - since, 3)
        if pid and pid != old_pid and "pid" not in seen:
            seen["pid"] = pid
            seen["launched"] = process_start(pid) or now
            seen["launch_seen_s"] = round(now - since, 3)
        if state == "ready" and pid and pid != old_pid:
            seen["ready"] = now
            seen["ready_s"] = round(now - since, 3)
            seen["status"] = status
            return seen
        if state == "failed":
            raise ControlError(f"{name} failed: {status.get('reason')}")
        time.sleep(0.1)
    raise ControlError(f"{name} not ready after {timeout:.0f} s: {seen}")


def first_completion(base: str, served: str, timeout: float = 60) -> float:
    """Seconds until the engine answers one completion (ready is /health; serving is this)."""
    started = time.monotonic()
    body = {"model": served, "prompt": "Hello", "max_tokens": 1}
    while True:
        try:
            r = httpx.post(f"{base}/v1/completions", json=body, timeout=10)
            if r.status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            return float("nan")
        time.sleep(0.05)


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


def _setup(args: argparse.Namespace) -> Setup:
    env = dict(kv.split("=", 1) for kv in args.engine_env)
    return Setup(
        venv=Path(args.engine_venv),
        model=Path(args.model),
        cpu=args.cpu,
        utilization=args.utilization,
        max_model_len=args.max_model_len,
        env=env,
    )


def _session(args: argparse.Namespace) -> Session:
    path = Path(args.results) / SESSION_DIR / "session.json"
    if not path.exists():
        raise SystemExit(f"no daemon session in {path.parent}: run the `up` phase first")
    session = Session.load(path)
    if not session.alive():
        raise SystemExit(f"the daemon of {path} (pid {session.pid}) is gone: run `up` again")
    return session


def phase_up(args: argparse.Namespace, rec: Recorder) -> None:
    rec.estimate(COLD_START_S + WARM_START_S + 30, "daemon start, coder (first: cold) then chat")
    setup = _setup(args)
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
    session = _session(args)
    levels = args.levels
    sweep_s = len(levels.split(",")) * (args.level_seconds + 4) + 20
    vs_s = args.rounds * 2 * (12 + (8 if args.cpu else 35))
    rec.estimate(sweep_s + 40 + vs_s, "bench sweep + monitor, ralph on/off, bench vs vllm bench")
    url = ["--url", session.url]
    monitor = [
        *rec.orchestrator("monitor", "--interval", "0.5", "--csv", str(rec.path("monitor.csv")))
    ]
    if session.topology:
        monitor += ["--topology", session.topology]
    common = [
        "--workload",
        "random",
        "--input-len",
        str(args.input_len),
        "--max-tokens",
        str(args.output_len),
        "-q",
    ]
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
    coder = Session.load(session.handle_file).ports["coder"]
    versus = [
        rec.python,
        str(REPO / "tests" / "perf" / "bench_vs_vllm.py"),
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
    runs = vllm_startup.launches(session.engine_log(name).splitlines())
    notes = [
        ln for ln in session.engine_log(name).splitlines() if ln.startswith(vllm_startup.START_NOTE)
    ]
    for note, lines in zip(notes, runs, strict=True):
        argv = note[len(vllm_startup.START_NOTE) :].split()
        gmu = (
            argv[argv.index("--gpu-memory-utilization") + 1]
            if ("--gpu-memory-utilization" in argv)
            else None
        )
        startup = vllm_startup.parse(lines)
        out.append({"gpu_memory_utilization": gmu, **startup.figures})
    return out


def phase_compare(args: argparse.Namespace, rec: Recorder) -> None:
    session = _session(args)
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
        "--workload",
        "random",
        "--input-len",
        str(args.input_len),
        "--max-tokens",
        str(args.output_len),
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
            _json_line(
                Path(args.results) / "startups.jsonl",
                {
                    "model": "chat",
                    "phase": "compare",
                    "order": i + 1,
                    "cache": "warm restart",
                    **startup.to_json(),
                },
            )


def _api_and_core(pid: int) -> list[int]:
    """The API server and its children (the EngineCore)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                kids.append(int(entry.name))
    return [pid, *sorted(kids)]


def _standby_ready(status: dict[str, Any]) -> bool:
    """True when the daemon reports no standby, or a ready one (field from the standby work)."""
    standby = status.get("standby")
    if not standby:
        return True
    state = standby.get("state") if isinstance(standby, dict) else standby
    return state in ("ready", "waiting", True)


def _crash(rec: Recorder, session: Session, name: str, label: str, rep: int) -> dict[str, Any]:
    port = session.ports[name]
    with session.client() as control:
        before = control.model(name)
        if before["state"] != "ready":
            raise ControlError(f"{name} is {before['state']}, not ready, before the crash")
        tree = _api_and_core(before["pid"])
        killed = time.time()
        os.kill(before["pid"], signal.SIGKILL)
        seen = watch_until_ready(control, name, before["pid"], 600, since=killed)
    serving = first_completion(f"http://127.0.0.1:{port}", name)
    startup = record_startup(
        Path(rec.results),
        session,
        name,
        {"phase": "restarts", "variant": label, "repeat": rep, "cache": "warm restart"},
        seen["launched"],
        seen["ready"],
    )
    log = session.engine_log(name).splitlines()
    notes = [ln for ln in log[-400:] if "GPU memory" in ln or "slice memory" in ln]
    result = {
        "variant": label,
        "repeat": rep,
        "killed_pids": tree,
        "crash_to_detected_s": seen.get("left_ready_s"),
        "crash_to_relaunch_s": seen.get("launch_seen_s"),
        "crash_to_ready_s": seen["ready_s"],
        "crash_to_serving_s": round(seen["ready_s"] + serving, 2),
        "memory_notes": notes[-2:],
        "phases": startup["phases"],
    }
    rec.say(f"{label} #{rep}: crash -> ready {seen['ready_s']:.1f} s")
    return result


def _direct(
    rec: Recorder, session: Session, setup: Setup, name: str, repeat: int
) -> list[dict[str, Any]]:
    """Plain vLLM, no daemon: the model's exact argv launched by hand, launch to /health."""
    with session.client() as control:
        status = control.model(name)
        control.command(name, "stop")
        control.wait_for(name, {"stopped"}, 120)
    env = {**os.environ, **setup.engine_env()}
    slice_uuid = (status.get("slice") or {}).get("uuid")
    if slice_uuid and not setup.cpu:
        env["CUDA_VISIBLE_DEVICES"] = slice_uuid
    out: list[dict[str, Any]] = []
    for rep in range(1, repeat + 1):
        with rec.path(f"direct-{rep}.log").open("w") as log:
            started = time.time()
            proc = subprocess.Popen(
                status["argv"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            ready = _wait_health(f"http://127.0.0.1:{session.ports[name]}", proc, 900)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        lines = rec.path(f"direct-{rep}.log").read_text(errors="replace").splitlines()
        startup = vllm_startup.parse(lines, launched=started, ready=ready)
        record = {
            "model": name,
            "phase": "restarts",
            "variant": "vllm-direct",
            "repeat": rep,
            "cache": "warm restart",
            **startup.to_json(),
        }
        _json_line(Path(rec.results) / "startups.jsonl", record)
        ready_s = None if ready is None else round(ready - started, 2)
        out.append(
            {
                "variant": "vllm-direct",
                "repeat": rep,
                "launch_to_ready_s": ready_s,
                "phases": startup.phases(),
            }
        )
        rec.say(f"vllm-direct #{rep}: launch -> ready {ready_s} s")
        time.sleep(3)  # the killed engine's memory: let the driver release it
    rec.record(
        "vllm-direct",
        status["argv"],
        sum(o["launch_to_ready_s"] or 0 for o in out),
        0,
        [rec.path(f"direct-{i}.log") for i in range(1, repeat + 1)],
    )
    with session.client() as control:
        control.command(name, "start")
        control.wait_for(name, {"ready"}, 900)
    return out


def _wait_health(base: str, proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return time.time()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return None


def _restart(session: Session, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Restart with these overrides and wait for the new engine (bench.compare's logic)."""
    with session.client() as control:
        return asyncio.run(restart_and_wait(ThreadedControl(control), name, overrides, 900))


def phase_restarts(args: argparse.Namespace, rec: Recorder) -> None:
    session = _session(args)
    variants = [parse_variant(v) for v in args.variant] or [parse_variant("daemon:")]
    starts = len(variants) * (1 + args.repeat) + (0 if args.no_restore else 1)
    starts += 2 * args.repeat if args.direct else 0
    rec.estimate(
        starts * (WARM_START_S + 5),
        f"{len(variants)} variant(s) x (switch + "
        f"{args.repeat} crash(es)){' + plain vLLM' if args.direct else ''}",
    )
    name = args.restart_model
    results: list[dict[str, Any]] = []
    if args.direct:
        results += _direct(rec, session, _setup(args), name, args.repeat)
    with session.client() as control:
        original = dict(control.model(name).get("overrides") or {})
    for variant in variants:
        overrides = {**original, **variant.settings}
        rec.say(f"{variant.label}: restart {name} with {json.dumps(overrides)}")
        switched = time.time()
        try:
            status = _restart(session, name, overrides)
        except Exception as exc:  # e.g. a setting this daemon refuses (422): report, go on
            results.append({"variant": variant.label, "error": str(exc)})
            rec.say(f"{variant.label}: {exc}")
            continue
        results.append(
            {
                "variant": variant.label,
                "settings": variant.settings,
                "restart_to_ready_s": round(time.time() - switched, 2),
            }
        )
        deadline = time.monotonic() + 180
        with session.client() as control:
            while not _standby_ready(status) and time.monotonic() < deadline:
                time.sleep(0.5)
                status = control.model(name)
        time.sleep(args.settle)
        for rep in range(1, args.repeat + 1):
            results.append(_crash(rec, session, name, variant.label, rep))
    if not args.no_restore:
        _restart(session, name, original)
    out = rec.path("restarts.json")
    previous = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(previous + results, indent=2) + "\n")
    argv = [sys.executable, "-m", "orchestrator.tooling.practicum", *sys.argv[1:]]
    rec.record(
        "restarts",
        argv,
        time.monotonic() - rec.started,
        0,
        [out],
        variants=[v.label for v in variants],
    )


def phase_down(args: argparse.Namespace, rec: Recorder) -> None:
    rec.estimate(40, "SIGTERM the daemon; leftovers and GPU memory after")
    session = _session(args)
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
        prog="python -m orchestrator.tooling.practicum",
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
    g.add_argument("--vs-prompts", type=int, default=320)
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
