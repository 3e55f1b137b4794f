"""A PNG of the leaderboard; matplotlib is optional and the numbers never depend on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> type[Any]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(
            "the plot needs matplotlib (pip install 'mig-orchestrator[plot]'); "
            "the table, CSV and JSON are complete without it"
        ) from None
    return Figure


def plot_result(result: dict[str, Any], path: Path) -> None:
    """Mean score with its 95% interval, or Bradley-Terry rating, one bar per model."""
    fig = require_matplotlib()(figsize=(7, 0.5 + 0.45 * _rows(result)), layout="constrained")
    ax = fig.subplots()
    if "single" in result:
        rows = [r for r in result["single"]["rows"] if r["mean"] is not None][::-1]
        means = [r["mean"] for r in rows]
        err = [
            [m - r["ci95"][0] for m, r in zip(means, rows, strict=True)],
            [r["ci95"][1] - m for m, r in zip(means, rows, strict=True)],
        ]
        ax.barh([r["model"] for r in rows], means, xerr=err, capsize=3)
        ax.set(xlim=(0, 10), xlabel="mean score (1-10), 95% bootstrap interval")
    elif "pairwise" in result:
        rows = [r for r in result["pairwise"]["rows"] if r["rating"] is not None][::-1]
        ax.barh([r["model"] for r in rows], [r["rating"] - 1000 for r in rows], left=1000)
        ax.set(xlabel="Bradley-Terry rating (1000 = average)")
    ax.set_title(f"{result['mode']}, judge {result['judge']}")
    fig.savefig(path, dpi=120)


def _rows(result: dict[str, Any]) -> int:
    part = result.get("single") or result.get("pairwise") or {"rows": []}
    return max(1, len(part["rows"]))
