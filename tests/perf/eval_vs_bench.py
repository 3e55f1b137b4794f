"""Output tokens/s an `eval` run drives through an engine against `mig-orchestrator bench` at the
same concurrency, output length and number of chat requests, side by side (A B, then B A).

The eval side is the answers phase of `mig-orchestrator eval` over copies of the built-in
question set (every turn in its conversation); the bench side is the `random` workload on the
chat endpoint with prompts as long as eval's (measured by an unreported eval run first). Neither
sets ignore_eos: the mean input and output lengths of each are printed. Goal: >= 0.8.

    .venv/bin/python -m tests.perf.eval_vs_bench                 # launches a tiny CPU engine
    .venv/bin/python -m tests.perf.eval_vs_bench --target http://127.0.0.1:8000 --model tiny
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.bench.openai_stream import Generation
from orchestrator.bench.runner import BenchPlan, Target, new_report, run_bench
from orchestrator.cli.main import main as cli
from orchestrator.evaluation.questions import load_questions
from orchestrator.text_table import render_table
from orchestrator.tooling import cpu_venv
from tests.perf.bench_vs_vllm import tiny_engine


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _questions(path: Path, copies: int) -> int:
    """The built-in set `copies` times with distinct ids; returns the number of turns."""
    qs = load_questions("builtin:coding").questions
    lines = [
        json.dumps({"question_id": f"{n}-{q.question_id}", "category": q.category,
                    "turns": list(q.turns)})
        for n in range(copies) for q in qs
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return copies * sum(len(q.turns) for q in qs)


def run_eval(args: argparse.Namespace, url: str, qfile: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="eval-perf-") as tmp:
        out = Path(tmp) / "r.json"
        argv = ["eval", "--mode", "answers", "--questions", str(qfile), "--db",
                str(Path(tmp) / "e.sqlite"), "--model", f"{url}#{args.model}",
                "--max-tokens", str(args.max_tokens), "--concurrency", str(args.concurrency),
                "--json", str(out), "-q"]  # fmt: skip
        load = _load()
        # The command's own table would interleave with the benchmark's: the JSON has it all.
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli(argv)
        if rc != 0:
            raise RuntimeError("eval failed")
        c = json.loads(out.read_text())["result"]["calls"]["answers"]
    return {"requests": c["asked"], "tokens": c["completion_tokens"], "wall_s": c["wall_s"],
            "in_tokens": c["prompt_tokens"], "tok_s": c["output_tok_s"], "load_before": load,
            "load_after": _load()}  # fmt: skip


def run_ours(args: argparse.Namespace, url: str, requests: int, input_len: int) -> dict[str, Any]:
    plan = BenchPlan(
        workload="random",
        endpoint="chat",
        concurrency=(args.concurrency,),
        requests=requests,
        gen=Generation(max_tokens=args.max_tokens, ignore_eos=False, temperature=0.0),
        input_len=input_len,
    )
    target = Target(url, args.model, f"{url}/metrics")
    bench = new_report(target, plan)
    load = _load()
    asyncio.run(run_bench(target, plan, bench, lambda _: None))
    lv = bench.levels[0]
    return {"requests": lv.completed, "tokens": lv.output_tokens, "wall_s": lv.duration_s,
            "in_tokens": lv.input_tokens, "tok_s": lv.output_throughput, "load_before": load,
            "load_after": _load()}  # fmt: skip


def rounds(args: argparse.Namespace, url: str) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="eval-perf-q-") as tmp:
        qfile = Path(tmp) / "q.jsonl"
        turns = _questions(qfile, args.copies)
        # Warm-up, not reported; it also measures the prompt length bench is then given.
        warm = run_eval(args, url, qfile)
        input_len = round(warm["in_tokens"] / max(warm["requests"], 1))
        results = {}
        for n in range(1, args.rounds + 1):
            order = ["eval", "bench"] if n % 2 else ["bench", "eval"]
            for tool in order:
                r = (
                    run_eval(args, url, qfile)
                    if tool == "eval"
                    else run_ours(args, url, turns, input_len)
                )
                results[f"{tool} #{n}"] = r
    return results


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    rows = [
        [label, str(r["requests"]), f"{r['in_tokens'] / max(r['requests'], 1):.1f}",
         f"{r['tokens'] / max(r['requests'], 1):.1f}", f"{r['wall_s']:.1f}", f"{r['tok_s']:.1f}",
         r["load_before"], r["load_after"]]
        for label, r in results.items()
    ]  # fmt: skip
    head = ["run", "requests", "in tok/req", "out tok/req", "wall s", "out tok/s",
            "load before", "load after"]  # fmt: skip
    print(f"chat, max_tokens {args.max_tokens}, concurrency {args.concurrency}, "
          f"model {args.model}; {os.cpu_count()} CPUs")  # fmt: skip
    print(render_table(head, rows, numbers=True))

    def mean(tool: str) -> float:
        vals = [r["tok_s"] for k, r in results.items() if k.startswith(tool)]
        return sum(vals) / len(vals)

    print(f"eval / bench output tok/s: {mean('eval') / mean('bench'):.3f} (goal >= 0.8)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--target", help="engine base URL (default: launch the tiny CPU engine)")
    p.add_argument("--model", default="tiny", help="served model name at --target")
    p.add_argument("--engine-venv", type=Path, default=cpu_venv.default_venv())
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--copies", type=int, default=2, help="copies of the built-in question set")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    if args.target:
        results = rounds(args, args.target.rstrip("/"))
    else:
        model_dir = cpu_venv.build_tiny_model(args.engine_venv, cpu_venv.default_tiny_model_dir())
        with tiny_engine(args.engine_venv, model_dir) as url:
            results = rounds(args, url)
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
