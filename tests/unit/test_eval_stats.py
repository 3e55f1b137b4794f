"""Intervals, the tie rule and Bradley-Terry ratings against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from orchestrator.evaluation.stats import Game, bootstrap_mean, bradley_terry, combine_orders


def test_bootstrap_of_two_values_spans_them() -> None:
    # Resampling [2, 8] gives means 2 (p=1/4), 5 (1/2), 8 (1/4): the 2.5 % and 97.5 %
    # percentiles are 2 and 8.
    ci = bootstrap_mean([2.0, 8.0])
    assert ci is not None and (ci.mean, ci.low, ci.high) == (5.0, 2.0, 8.0)


def test_bootstrap_is_reproducible_and_degenerate_when_constant() -> None:
    values = [3.0, 7.0, 7.0, 9.0, 1.0, 10.0, 4.0]
    assert bootstrap_mean(values) == bootstrap_mean(values)
    ci = bootstrap_mean(values)
    assert ci is not None and ci.low < ci.mean < ci.high
    assert ci.mean == pytest.approx(41 / 7)
    const = bootstrap_mean([6.0] * 5)
    assert const is not None and (const.low, const.high) == (6.0, 6.0)
    assert bootstrap_mean([]) is None


@pytest.mark.parametrize(
    ("first", "second", "outcome", "flipped"),
    [
        ("A", "B", "1", False),  # model 1 wins in both orders
        ("B", "A", "2", False),  # model 2 wins in both orders
        ("A", "A", "tie", True),  # position A wins both times: position bias, a tie
        ("B", "B", "tie", True),
        ("tie", "tie", "tie", False),
        ("A", "tie", "tie", True),
        ("tie", "A", "tie", True),
    ],
)
def test_a_disagreement_between_the_orders_is_a_tie(
    first: str, second: str, outcome: str, flipped: bool
) -> None:
    assert combine_orders(first, second) == (outcome, flipped)


def test_bradley_terry_two_models() -> None:
    games = [Game("a", "b", "a")] * 3 + [Game("a", "b", "b")]
    r = bradley_terry(games, prior_ties=0)
    # p_a / p_b = 3 wins / 1 win; centred on 1000.
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert r["a"] + r["b"] == pytest.approx(2000, abs=1e-6)
    # One virtual tie: 3.5 against 1.5.
    r = bradley_terry(games, prior_ties=1)
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(3.5 / 1.5), abs=1e-6)


def test_bradley_terry_ties_are_half_wins_and_a_cycle_is_even() -> None:
    r = bradley_terry([Game("a", "b", None)] * 4, prior_ties=0)
    assert r["a"] == pytest.approx(1000) and r["b"] == pytest.approx(1000)
    cycle = [Game("a", "b", "a"), Game("b", "c", "b"), Game("c", "a", "c")]
    r = bradley_terry(cycle, prior_ties=0)
    assert all(v == pytest.approx(1000, abs=1e-6) for v in r.values())


def test_bradley_terry_three_models_hand_computed() -> None:
    # a beats b twice, b beats c twice, a and c tie once; with no prior the MM fixed point
    # satisfies w_i = sum_j n_ij p_i / (p_i + p_j). Check that equation on the result.
    games = [Game("a", "b", "a")] * 2 + [Game("b", "c", "b")] * 2 + [Game("a", "c", None)]
    r = bradley_terry(games, prior_ties=0)
    p = {m: 10 ** ((v - 1000) / 400) for m, v in r.items()}
    n = {("a", "b"): 2, ("b", "c"): 2, ("a", "c"): 1}
    wins = {"a": 2.5, "b": 2.0, "c": 0.5}
    for m, w in wins.items():
        expected = sum(k * p[m] / (p[x] + p[y]) for (x, y), k in n.items() if m in (x, y))
        assert w == pytest.approx(expected, rel=1e-6)
    assert r["a"] > r["b"] > r["c"]
