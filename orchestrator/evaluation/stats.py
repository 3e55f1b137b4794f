"""Numbers for the leaderboard: bootstrap intervals, the two-order tie rule, Bradley-Terry."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BOOTSTRAP_SEED = 0
BOOTSTRAP_ROUNDS = 1000
# Chatbot Arena's Elo-like scale: 400 points is a factor of 10 in the odds, anchored at 1000.
BT_SCALE, BT_BASE, BT_ANCHOR = 400.0, 10.0, 1000.0


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def bootstrap_mean(
    values: Sequence[float],
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> Interval | None:
    """Mean and percentile bootstrap interval; the fixed seed makes it reproducible."""
    if not values:
        return None
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(rounds))
    tail = (1.0 - level) / 2.0
    low = means[math.floor(tail * (rounds - 1))]
    high = means[math.ceil((1.0 - tail) * (rounds - 1))]
    return Interval(sum(values) / n, low, high)


def combine_orders(first: str, second_swapped: str) -> tuple[str, bool]:
    """One pair's outcome from both orders, and whether the orders disagreed.

    `first` is the verdict with model 1 shown as A; `second_swapped` the verdict with model 2
    shown as A. A disagreement counts as a tie (MT-Bench's rule against position bias).
    Returns "1", "2" or "tie".
    """
    one = {"A": "1", "B": "2", "tie": "tie"}[first]
    two = {"A": "2", "B": "1", "tie": "tie"}[second_swapped]
    return (one if one == two else "tie"), one != two


@dataclass(frozen=True)
class Game:
    """One pair's outcome: winner is a model, or None for a tie."""

    a: str
    b: str
    winner: str | None


def bradley_terry(
    games: Iterable[Game], prior_ties: float = 1.0, iterations: int = 10_000, tol: float = 1e-10
) -> dict[str, float]:
    """Bradley-Terry ratings by Hunter's MM algorithm; a tie is half a win to each side.

    `prior_ties` adds that many virtual ties to every pair that played, so an unbeaten model
    gets a finite rating. Ratings are 400*log10(strength), centred on 1000.
    """
    wins: dict[str, float] = {}
    meetings: dict[tuple[str, str], float] = {}
    for g in games:
        pair = (min(g.a, g.b), max(g.a, g.b))
        meetings[pair] = meetings.get(pair, 0.0) + 1.0
        for m in (g.a, g.b):
            wins.setdefault(m, 0.0)
        if g.winner is None:
            wins[g.a] += 0.5
            wins[g.b] += 0.5
        else:
            wins[g.winner] += 1.0
    for pair in meetings:
        meetings[pair] += prior_ties
        for m in pair:
            wins[m] += prior_ties / 2.0
    return _mm(wins, meetings, iterations, tol)


def _mm(
    wins: dict[str, float], meetings: dict[tuple[str, str], float], iterations: int, tol: float
) -> dict[str, float]:
    models = sorted(wins)
    p = dict.fromkeys(models, 1.0)
    for _ in range(iterations):
        new = {}
        for m in models:
            denom = sum(n / (p[a] + p[b]) for (a, b), n in meetings.items() if m in (a, b))
            new[m] = wins[m] / denom if denom else 1.0
        # Fix the scale: the geometric mean is 1.
        logs = [math.log(v) if v > 0 else -math.inf for v in new.values()]
        centre = math.exp(sum(logs) / len(logs)) if all(math.isfinite(x) for x in logs) else 1.0
        new = {m: v / centre for m, v in new.items()}
        change = max(abs(new[m] - p[m]) for m in models)
        p = new
        if change < tol:
            break
    return {
        m: BT_ANCHOR + BT_SCALE * math.log(v, BT_BASE) if v > 0 else -math.inf for m, v in p.items()
    }
