"""The leaderboard: mean scores with bootstrap intervals, win rates with Bradley-Terry ratings."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from orchestrator.evaluation.plan import RunPlan
from orchestrator.evaluation.runner import Outcome
from orchestrator.evaluation.stats import Game, bootstrap_mean, bradley_terry, combine_orders

MAX_EXAMPLES = 20


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _single(plan: RunPlan, out: Outcome, labels: list[str]) -> dict[str, Any]:
    cats = {q.question_id: q.category for q in plan.questions.questions}
    scores: dict[str, list[float]] = defaultdict(list)
    by_cat: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    bad: dict[str, int] = defaultdict(int)
    examples = []
    for (model, qid, _b, turn, _s), v in sorted(out.verdicts.items(), key=str):
        if v.ok:
            scores[model].append(float(v.value))  # type: ignore[arg-type]
            by_cat[model][cats[qid]].append(float(v.value))  # type: ignore[arg-type]
        else:
            bad[model] += 1
            examples.append({"model": model, "question": qid, "turn": turn + 1, "reason": v.error})
    rows: list[dict[str, Any]] = []
    for m in labels:
        ci = bootstrap_mean(scores[m])
        rows.append(
            {
                "model": m,
                "scored": len(scores[m]),
                "unparseable": bad[m],
                "missing": plan.questions.turn_count - len(scores[m]) - bad[m],
                "mean": _round(ci.mean if ci else None),
                "ci95": [_round(ci.low), _round(ci.high)] if ci else None,
                "categories": {c: _round(sum(v) / len(v)) for c, v in sorted(by_cat[m].items())},
            }
        )
    rows.sort(key=lambda r: (r["mean"] is None, -(r["mean"] or 0.0), r["model"]))
    return {"rows": rows, "unparseable": sum(bad.values()), "examples": examples[:MAX_EXAMPLES]}


def _pair_games(plan: RunPlan, out: Outcome, labels: list[str]) -> dict[str, Any]:
    """Combine both orders of every pair: games, flips and unparseable pairs."""
    games: list[tuple[Game, str]] = []
    flips = bad = 0
    examples = []
    for m1, m2 in plan.pairs(labels):
        for q in plan.questions.questions:
            for turn in range(len(q.turns)):
                ab = out.verdicts.get((m1, q.question_id, m2, turn, False))
                ba = out.verdicts.get((m1, q.question_id, m2, turn, True))
                if ab is None or ba is None:
                    continue
                if not (ab.ok and ba.ok):
                    bad += 1
                    reason = "; ".join(
                        f"{order}: {v.error}" for order, v in (("A/B", ab), ("B/A", ba)) if v.error
                    )
                    examples.append(
                        {"model": f"{m1} vs {m2}", "question": q.question_id,
                         "turn": turn + 1, "reason": reason}
                    )  # fmt: skip
                    continue
                outcome, flipped = combine_orders(str(ab.value), str(ba.value))
                flips += flipped
                winner = {"1": m1, "2": m2}.get(outcome)
                games.append((Game(m1, m2, winner), q.category))
    return {"games": games, "flips": flips, "bad": bad, "examples": examples}


def _tally(games: list[tuple[Game, str]], m: str) -> tuple[int, int, int]:
    mine = [g for g, _ in games if m in (g.a, g.b)]
    wins = sum(g.winner == m for g in mine)
    ties = sum(g.winner is None for g in mine)
    return wins, ties, len(mine) - wins - ties


def _pairwise(plan: RunPlan, out: Outcome, labels: list[str]) -> dict[str, Any]:
    g = _pair_games(plan, out, labels)
    games: list[tuple[Game, str]] = g["games"]
    ratings = bradley_terry(game for game, _ in games)
    rows: list[dict[str, Any]] = []
    for m in labels:
        w, t, lo = _tally(games, m)
        n = w + t + lo
        cats: dict[str, Any] = {}
        for cat in sorted({c for _, c in games}):
            cw, ct, cl = _tally([x for x in games if x[1] == cat], m)
            cn = cw + ct + cl
            cats[cat] = _round((cw + 0.5 * ct) / cn) if cn else None
        rows.append(
            {
                "model": m,
                "wins": w,
                "ties": t,
                "losses": lo,
                "win_rate": _round((w + 0.5 * t) / n) if n else None,
                "rating": _round(ratings.get(m), 1),
                "categories": cats,
            }
        )
    rows.sort(key=lambda r: (r["rating"] is None, -(r["rating"] or 0.0), r["model"]))
    judged = len(games)
    return {
        "rows": rows,
        "baseline": plan.baseline if plan.mode == "pairwise-baseline" else None,
        "pairs_judged": judged,
        "order_flips": g["flips"],
        "flip_rate": _round(g["flips"] / judged) if judged else None,
        "unparseable": g["bad"],
        "examples": g["examples"][:MAX_EXAMPLES],
    }


def build(plan: RunPlan, out: Outcome) -> dict[str, Any]:
    """The run's result: what the terminal, CSV, JSON, plot and dashboard all show."""
    labels = [c.label for c in plan.candidates]
    result: dict[str, Any] = {
        "mode": plan.mode,
        "judge": plan.judge.label if plan.judge else None,
        "questions": plan.questions.source,
        "failed": {**{u.label: u.reason for u in plan.unavailable}, **out.failed},
        "judge_failed": out.judge_failed,
        "errors": out.errors[:MAX_EXAMPLES],
        "calls": {k: v.as_dict() for k, v in out.counts.items()},
    }
    answered = [m for m in labels if m in out.answers]
    if plan.mode == "single":
        result["single"] = _single(plan, out, answered)
    elif plan.mode != "answers":
        result["pairwise"] = _pairwise(plan, out, answered)
    return result
