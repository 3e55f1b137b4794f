"""`bench` and `vllm bench serve` on the same workload against the same engine, in pairs.

Both send random prompts that the engine counts as --input-len tokens, --output-len tokens with
ignore_eos and greedy sampling, --num-prompts requests at --concurrency. Pair n runs each tool
once, both with seed + n, so no run meets prompts an earlier one cached; every other pair starts
with vLLM's run (A B B A ...). Medians of each side, their ratios, the median of the ratios pair
by pair and the load average are printed.

    python -m orchestrator.bench.vs_vllm --target http://127.0.0.1:8000 \\
        --served-model-name tiny --tokenizer ~/.cache/mig-orchestrator/models/tiny-llama-l2-s0
    python -m orchestrator.bench.vs_vllm --start-engine   # a tiny CPU engine, stopped after
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from orchestrator.bench.openai_stream import Generation, OpenAIClient
from orchestrator.bench.runner import BenchPlan, Target, new_report, run_bench
from orchestrator.bench.workloads import Prompt
from orchestrator.text_table import render_table
from orchestrator.tooling import cpu_venv

OURS, VLLM = "bench", "vllm bench serve"
# The goal figures: each side's median, and ours / vLLM's.
FIGURES = (
    ("output tok/s", "output_throughput", 1),
    ("TTFT p50 (ms)", "p50_ttft_ms", 1),
    ("ITL p50 (ms)", "p50_itl_ms", 2),
)
MORE = (
    ("requests/s", "request_throughput", 2),
    ("TPOT p50 (ms)", "p50_tpot_ms", 2),
    ("E2E p50 (ms)", "p50_e2el_ms", 1),
    ("served prompt tokens", "mean_input_tokens", 1),
    ("failed", "failed", 0),
)
GOAL = 0.05


@dataclass(frozen=True)
class Run:
    """One run of one tool: its figures and the 1-minute load average around it."""

    tool: str
    pair: int
    load_before: float
    load_after: float
    figures: dict[str, float | None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tiny_engine(venv: Path, model_dir: Path, *extra: str) -> Iterator[str]:
    """A vLLM CPU engine serving model_dir as `tiny`; its whole process group dies after."""
    port = _free_port()
    argv = [
        *cpu_venv.cpu_engine_command(venv),
        "--model", str(model_dir), "--served-model-name", "tiny", "--host", "127.0.0.1",
        "--port", str(port), "--max-model-len", "2048", "--dtype", "float32", *extra,
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
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
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


def run_ours(args: argparse.Namespace, url: str, seed: int, requests: int) -> dict[str, Any]:
    """One `bench` run in this process; its figures under vllm bench serve's JSON keys."""
    plan = BenchPlan(
        workload="random",
        concurrency=(args.concurrency,),
        requests=requests,
        gen=Generation(max_tokens=args.output_len, ignore_eos=True),
        input_len=args.input_len,
        warmup=1,
        seed=seed,
    )
    target = Target(url, args.served_model_name, f"{url}/metrics")
    report = new_report(target, plan)
    asyncio.run(run_bench(target, plan, report, lambda _: None))
    if report.refused is not None:
        raise RuntimeError(f"bench refused the run: {report.refused}")
    lv = report.levels[0]
    out: dict[str, Any] = {
        "completed": lv.completed,
        "failed": lv.failed,
        "mean_input_tokens": lv.input_tokens / max(lv.completed, 1),
        "request_throughput": lv.request_throughput,
        "output_throughput": lv.output_throughput,
    }
    for key, dist, scale in (
        ("ttft", lv.ttft_ms, 1),
        ("tpot", lv.tpot_ms, 1),
        ("itl", lv.itl_ms, 1),
        ("e2el", lv.e2e_s, 1000),
    ):
        out[f"p50_{key}_ms"] = None if dist is None else dist.p50 * scale
    return out


def engine_adds(url: str, model: str) -> int:
    """Tokens the engine adds to any completions prompt (BOS): vllm bench serve's random
    prompts exclude them, ours count them, so vLLM's --random-input-len is that much smaller."""

    async def count() -> int:
        async with OpenAIClient(url, model) as client:
            return await client.count_tokens(Prompt((("user", ""),)))

    return asyncio.run(count())


def run_vllm(args: argparse.Namespace, url: str, seed: int, input_len: int) -> dict[str, Any]:
    """One `vllm bench serve` run from the engine venv; its saved JSON result."""
    vllm = args.engine_venv.expanduser().absolute() / "bin" / "vllm"
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as out:
        argv = [
            str(vllm), "bench", "serve",
            "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", args.served_model_name, "--tokenizer", str(args.tokenizer),
            "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
            "--max-concurrency", str(args.concurrency), "--request-rate", "inf",
            # Greedy, as ours: without it vllm bench serve leaves sampling to the server's defaults.
            "--ignore-eos", "--temperature", "0", "--num-warmups", "1", "--seed", str(seed),
            "--disable-tqdm",
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
    result["mean_input_tokens"] = result["total_input_tokens"] / max(result["completed"], 1)
    return result


def pair_order(pair: int, order: str) -> tuple[str, str]:
    """Which tool runs first in a pair: always ours for `abab`; for `abba` every other pair
    starts with vLLM's, so a drift of the engine over the runs favours neither tool."""
    return (VLLM, OURS) if order == "abba" and pair % 2 == 0 else (OURS, VLLM)


def run_pairs(args: argparse.Namespace, url: str) -> list[Run]:
    """An unreported warm-up, then `--pairs` pairs of one run of each tool."""
    vllm_input_len = args.input_len - engine_adds(url, args.served_model_name)
    run_ours(args, url, args.seed - 1, max(args.concurrency, args.num_prompts // 4))
    runs = []
    for pair in range(1, args.pairs + 1):
        seed = args.seed + pair
        for tool in pair_order(pair, args.order):
            before = os.getloadavg()[0]
            if tool == OURS:
                result = run_ours(args, url, seed, args.num_prompts)
            else:
                result = run_vllm(args, url, seed, vllm_input_len)
            keys = [key for _, key, _ in (*FIGURES, *MORE)]
            figures = {k: None if result.get(k) is None else float(result[k]) for k in keys}
            runs.append(Run(tool, pair, before, os.getloadavg()[0], figures))
    return runs


def medians(runs: list[Run], tool: str) -> dict[str, float | None]:
    """Per figure, the median over the tool's runs (None when any run lacks it)."""
    mine = [r for r in runs if r.tool == tool]
    out: dict[str, float | None] = {}
    for key in mine[0].figures if mine else ():
        values = [r.figures[key] for r in mine]
        out[key] = None if None in values else statistics.median(v for v in values if v is not None)
    out["load"] = statistics.median(x for r in mine for x in (r.load_before, r.load_after))
    return out


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pair_ratios(runs: list[Run], key: str) -> list[float]:
    """Ours / vLLM's within each pair: the two runs closest in time, so closest in load."""
    by_pair: dict[int, dict[str, float | None]] = {}
    for r in runs:
        by_pair.setdefault(r.pair, {})[r.tool] = r.figures[key]
    return [
        a / b
        for a, b in ((p.get(OURS), p.get(VLLM)) for p in by_pair.values())
        if a is not None and b
    ]


def render(runs: list[Run]) -> str:
    """Every run, then each side's medians with the ratio ours / vLLM's against the goal, and
    the median of the ratios pair by pair."""
    rows = [
        [str(r.pair), r.tool, f"{r.load_before:.2f}/{r.load_after:.2f}"]
        + [_cell(r.figures[key], d) for _, key, d in (*FIGURES, *MORE)]
        for r in runs
    ]
    names = [label for label, _, _ in (*FIGURES, *MORE)]
    lines = [render_table(["PAIR", "TOOL", "LOAD 1m", *names], rows, numbers=True), ""]
    ours, theirs = medians(runs, OURS), medians(runs, VLLM)
    summary = []
    for label, key, digits in (*FIGURES, *MORE):
        a, b = ours.get(key), theirs.get(key)
        ratio = a / b if a is not None and b else None
        goal = "-" if ratio is None else ("yes" if abs(ratio - 1) <= GOAL else "NO")
        within = goal if (label, key, digits) in FIGURES else ""
        paired = pair_ratios(runs, key)
        by_pair = _cell(statistics.median(paired) if paired else None, 3)
        summary.append(
            [label, _cell(a, digits), _cell(b, digits), _cell(ratio, 3), within, by_pair]
        )
    summary.append(["load 1m (median)", f"{ours['load']:.2f}", f"{theirs['load']:.2f}", "", "", ""])
    header = ["MEDIAN OF EACH SIDE", OURS, VLLM, "RATIO", f"WITHIN {GOAL:.0%}", "PAIR RATIO p50"]
    lines.append(render_table(header, summary, numbers=True))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
    p.add_argument("--pairs", type=int, default=4, help="pairs of runs (at least 3 for the goal)")
    p.add_argument(
        "--order",
        choices=("abba", "abab"),
        default="abba",
        help="abba: every other pair starts with vLLM's run (default); abab: ours always first",
    )
    # Older callers said --rounds for the same thing.
    p.add_argument("--rounds", dest="pairs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write every run here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.start_engine:
        model_dir = cpu_venv.build_tiny_model(args.engine_venv, cpu_venv.default_tiny_model_dir())
        args.tokenizer = args.tokenizer or model_dir
        args.served_model_name = "tiny"
        # Prefix caching off: no run may be sped up by prompts another one sent.
        with tiny_engine(args.engine_venv, model_dir, "--no-enable-prefix-caching") as url:
            runs = run_pairs(args, url)
    else:
        if not args.target or not args.tokenizer:
            p.error("give --target and --tokenizer, or --start-engine")
        runs = run_pairs(args, args.target.rstrip("/"))
    print(
        f"random {args.input_len} prompt tokens (as the engine counts them) / {args.output_len} "
        f"out, {args.num_prompts} requests at concurrency {args.concurrency}, model "
        f"{args.served_model_name}, {args.pairs} pairs, order {args.order.upper()}"
    )
    print(render(runs))
    if args.json:
        body = {"runs": [asdict(r) for r in runs], OURS: medians(runs, OURS)}
        body[VLLM] = medians(runs, VLLM)
        args.json.write_text(json.dumps(body, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
