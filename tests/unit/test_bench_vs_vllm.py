"""The A B comparison's arithmetic: medians of each side, ratios against the goal, load."""

from __future__ import annotations

from orchestrator.bench.vs_vllm import (
    FIGURES,
    MORE,
    OURS,
    VLLM,
    Run,
    medians,
    pair_order,
    pair_ratios,
    render,
)

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
    # Ratio of the medians, whether within the goal, then the median of 100/98, 300/100, 103/500.
    assert ttft.split()[-3:] == ["1.030", "yes", "1.020"]
    assert "load 1m (median)" in text and "1.00/2.00" in text


def test_a_figure_outside_the_goal_says_no() -> None:
    runs = [_run(OURS, 1, 120, 1.0), _run(VLLM, 1, 100, 1.0)]
    line = next(x for x in render(runs).splitlines() if x.startswith("TTFT p50 (ms)"))
    assert line.split()[-3:] == ["1.200", "NO", "1.200"]


def test_pair_ratios_pair_each_run_with_its_partner_in_either_order() -> None:
    runs = [_run(OURS, 1, 90, 1.0), _run(VLLM, 1, 100, 1.0), _run(VLLM, 2, 50, 1.0)]
    runs.append(_run(OURS, 2, 60, 1.0))
    assert pair_ratios(runs, "p50_ttft_ms") == [0.9, 1.2]


def test_abba_starts_every_other_pair_with_vllm_and_abab_never() -> None:
    assert [pair_order(n, "abba")[0] for n in (1, 2, 3, 4)] == [OURS, VLLM, OURS, VLLM]
    assert {pair_order(n, "abab") for n in (1, 2, 3, 4)} == {(OURS, VLLM)}
