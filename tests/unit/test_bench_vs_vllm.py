"""The A B comparison's arithmetic: medians of each side, ratios against the goal, load."""

from __future__ import annotations

from orchestrator.bench.vs_vllm import FIGURES, MORE, OURS, VLLM, Run, medians, render

KEYS = [key for _, key, _ in (*FIGURES, *MORE)]


def _run(tool: str, pair: int, ttft: float, load: float) -> Run:
    figures: dict[str, float | None] = dict.fromkeys(KEYS, 1.0)
    figures["p50_ttft_ms"] = ttft
    return Run(tool, pair, load, load + 1, figures)


def test_medians_ratios_and_load_are_printed_per_figure() -> None:
    runs = [
        _run(OURS, 1, 100, 1.0),
        _run(VLLM, 1, 98, 2.0),
        _run(OURS, 2, 300, 1.0),
        _run(VLLM, 2, 100, 2.0),
        _run(OURS, 3, 103, 3.0),
        _run(VLLM, 3, 500, 4.0),
    ]
    ours, theirs = medians(runs, OURS), medians(runs, VLLM)
    assert ours["p50_ttft_ms"] == 103 and theirs["p50_ttft_ms"] == 100
    assert ours["load"] == 2.0 and theirs["load"] == 3.0  # before and after each run
    text = render(runs)
    ttft = next(line for line in text.splitlines() if line.startswith("TTFT p50 (ms)"))
    assert ttft.split()[-2:] == ["1.030", "yes"]
    assert "load 1m (median)" in text and "1.00/2.00" in text


def test_a_figure_outside_the_goal_says_no() -> None:
    runs = [_run(OURS, 1, 120, 1.0), _run(VLLM, 1, 100, 1.0)]
    line = next(x for x in render(runs).splitlines() if x.startswith("TTFT p50 (ms)"))
    assert line.split()[-2:] == ["1.200", "NO"]
