"""The leaderboard as a terminal table, CSV and JSON (the plot is in plot.py)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from orchestrator.text_table import render_table


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _categories(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({c for r in rows for c in r["categories"]})


def single_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    cats = _categories(rows)
    header = ["model", "mean", "95% CI", "scored", "unparseable", "missing", *cats]
    body = [
        [
            r["model"],
            _num(r["mean"]),
            f"{r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}" if r["ci95"] else "-",
            str(r["scored"]),
            str(r["unparseable"]),
            str(r["missing"]),
            *(_num(r["categories"].get(c)) for c in cats),
        ]
        for r in rows
    ]
    return header, body


def pair_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    cats = _categories(rows)
    header = ["model", "rating", "win rate", "wins", "ties", "losses", *cats]
    body = [
        [
            r["model"],
            _num(r["rating"], "{:.0f}"),
            _num(r["win_rate"], "{:.3f}"),
            str(r["wins"]),
            str(r["ties"]),
            str(r["losses"]),
            *(_num(r["categories"].get(c), "{:.3f}") for c in cats),
        ]
        for r in rows
    ]
    return header, body


def _table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    if "single" in result:
        return single_table(result["single"]["rows"])
    if "pairwise" in result:
        return pair_table(result["pairwise"]["rows"])
    return None


def render_text(result: dict[str, Any]) -> str:
    lines = [f"mode {result['mode']}, judge {result['judge'] or '-'}, {result['questions']}"]
    table = _table(result)
    if table:
        lines += ["", render_table(*table, numbers=True)]
    part = result.get("single") or result.get("pairwise") or {}
    if "pairwise" in result:
        p = result["pairwise"]
        lines.append(
            f"\npairs judged {p['pairs_judged']}; order flips {p['order_flips']} "
            f"(rate {_num(p['flip_rate'], '{:.3f}')}), counted as ties"
        )
    if part.get("unparseable"):
        lines.append(f"\n{part['unparseable']} unparseable verdicts (not scored), e.g.:")
        lines += [
            f"  {e['model']} q{e['question']} turn {e['turn']}: {e['reason']}"
            for e in part["examples"][:5]
        ]
    for model, reason in result["failed"].items():
        lines.append(f"failed: {model}: {reason}")
    if result["judge_failed"]:
        lines.append(f"judge failed: {result['judge_failed']}")
    for e in result["errors"][:5]:
        lines.append(f"error: {e['model']} q{e['question']} turn {e['turn']}: {e['reason']}")
    for phase, c in result["calls"].items():
        lines.append(
            f"{phase}: {c['asked']} asked, {c['cached']} cached; {c['prompt_tokens']} prompt and "
            f"{c['completion_tokens']} output tokens in {c['wall_s']:.1f}s "
            f"({c['output_tok_s']:.1f} output tok/s)"
        )
    return "\n".join(lines)


def render_csv(result: dict[str, Any]) -> str:
    table = _table(result)
    buf = io.StringIO()
    if table:
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(table[0])
        w.writerows(table[1])
    return buf.getvalue()


def render_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False)
