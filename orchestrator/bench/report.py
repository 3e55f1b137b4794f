"""Readable tables and JSON for bench and compare reports."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from orchestrator.bench.compare import CompareReport
from orchestrator.bench.stats import (
    BenchReport,
    CacheDelta,
    LevelReport,
    RalphReport,
)
from orchestrator.text_table import render_table


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to dicts; NaN and infinities to None, since JSON has neither."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2)


def number(value: Any, digits: int = 1) -> str:
    """A table cell: "-" for a missing or non-finite value, text that is no number as it is."""
    if value is None or value == "":
        return "-"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{f:.{digits}f}" if math.isfinite(f) else "-"


def _pcts(d: Mapping[str, Any] | None, digits: int = 1) -> str:
    return "-" if d is None else "/".join(number(d[k], digits) for k in ("p50", "p90", "p99"))


def _rate(cache: CacheDelta | None) -> str:
    return "-" if cache is None or cache.hit_rate is None else f"{cache.hit_rate:.1%}"


LEVEL_HEADER = [
    "CONC",
    "OK",
    "ERR",
    "REQ/S",
    "OUT TOK/S",
    "TOT TOK/S",
    "TTFT ms p50/90/99",
    "ITL ms p50/90/99",
    "TPOT ms p50",
    "E2E s p50/90/99",
]


def level_row(level: LevelReport | Mapping[str, Any], first: str | None = None) -> list[str]:
    """A level's cells under LEVEL_HEADER, from the report or from its JSON (saved results)."""
    doc = to_jsonable(level) if isinstance(level, LevelReport) else level
    tpot = doc["tpot_ms"]
    return [
        first if first is not None else str(doc["concurrency"]),
        str(doc["completed"]),
        str(doc["failed"]),
        number(doc["request_throughput"], 2),
        number(doc["output_throughput"]),
        number(doc["total_token_throughput"]),
        _pcts(doc["ttft_ms"]),
        _pcts(doc["itl_ms"], 2),
        number(tpot["p50"] if tpot else None, 2),
        _pcts(doc["e2e_s"], 2),
    ]


def _errors(level: LevelReport, where: str) -> list[str]:
    return [
        f"  {where}: {kind} x{count}: {level.error_examples.get(kind, '')[:160]}"
        for kind, count in level.errors.items()
    ]


RALPH_HEADER = [
    "ITER",
    "OK",
    "ERR",
    "HIT RATE",
    "QUERIED",
    "HIT",
    "TTFT ms p50/90/99",
    "E2E s p50",
]


def _ralph_row(label: str, level: LevelReport, cache: CacheDelta | None) -> list[str]:
    return [
        label,
        str(level.completed),
        str(level.failed),
        _rate(cache),
        "-" if cache is None else f"{cache.queries:.0f}",
        "-" if cache is None else f"{cache.hits:.0f}",
        _pcts(to_jsonable(level.ttft_ms)),
        number(level.e2e_s.p50 if level.e2e_s else None, 2),
    ]


def _ralph_lines(report: BenchReport, ralph: RalphReport) -> tuple[list[str], list[str]]:
    """The per-iteration table (plus the whole run) and the errors by iteration."""
    rows = [_ralph_row(str(it.iteration), it.level, it.cache) for it in ralph.iterations]
    if report.levels:
        rows.append(_ralph_row("all", report.levels[0], ralph.cache))
    lines = [
        f"{ralph.loops} Ralph loops in lockstep; hit rate = d(hits)/d(queries)",
        render_table(RALPH_HEADER, rows, numbers=True),
    ]
    errors = [e for it in ralph.iterations for e in _errors(it.level, f"iteration {it.iteration}")]
    return lines, errors


def render_bench(report: BenchReport) -> str:
    lines = [
        f"{report.workload} workload -> {report.target} (model {report.model}, /{report.endpoint})",
        "",
    ]
    if report.ralph is None:
        rows = [level_row(level) for level in report.levels]
        lines.append(render_table(LEVEL_HEADER, rows, numbers=True))
        errors = [e for lv in report.levels for e in _errors(lv, f"concurrency {lv.concurrency}")]
    else:
        table, errors = _ralph_lines(report, report.ralph)
        lines += table
    if errors:
        lines += ["", "errors:", *errors]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def render_compare(report: CompareReport) -> str:
    header = ["VARIANT", "STATUS", *LEVEL_HEADER, "HIT RATE"]
    rows = []
    failures = []
    for v in report.variants:
        if v.report is None:
            rows.append([v.label, v.status] + ["-"] * (len(header) - 2))
            failures.append(f"  {v.label}: {v.reason}")
            continue
        ralph = v.report.ralph
        for level in v.report.levels:
            rate = _rate(ralph.cache) if ralph else "-"
            rows.append([v.label, v.status, *level_row(level), rate])
    lines = [f"compare on model {report.model}", "", render_table(header, rows, numbers=True)]
    if failures:
        lines += ["", "failed variants:", *failures]
    if report.restored:
        lines.append(
            f"\nrestored {report.model} to overrides {json.dumps(report.original_overrides)}"
        )
    elif report.restore_error:
        lines.append(f"\nRESTORE FAILED for {report.model}: {report.restore_error}")
    return "\n".join(lines)
