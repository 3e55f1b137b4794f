"""PNG charts of bench and compare reports (matplotlib is the optional `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.bench.compare import CompareReport
from orchestrator.bench.stats import BenchReport


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> type[Any]:
    """matplotlib's Figure; PlotUnavailable when it is missing (check before a long run)."""
    try:
        # Figure without pyplot: no global figure state, no GUI backend.
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: "
            "pip install 'mig-orchestrator[plot]' (or leave out --plot)"
        ) from None
    return Figure


def _figure(panels: int) -> tuple[Any, list[Any]]:
    fig = require_matplotlib()(figsize=(6 * panels, 4.2), layout="constrained")
    return fig, list(fig.subplots(1, panels))


def plot_reports(series: dict[str, BenchReport], path: Path, title: str) -> None:
    """One line per report: throughput and TTFT vs concurrency, or per-iteration Ralph charts."""
    if any(r.ralph is not None for r in series.values()):
        _plot_ralph(series, path, title)
        return
    fig, (tput, ttft) = _figure(2)
    for label, report in series.items():
        conc = [lv.concurrency for lv in report.levels]
        tput.plot(conc, [lv.output_throughput for lv in report.levels], "o-", label=label)
        ttft.plot(
            conc,
            [lv.ttft_ms.p50 if lv.ttft_ms else float("nan") for lv in report.levels],
            "o-",
            label=f"{label} p50",
        )
        ttft.plot(
            conc,
            [lv.ttft_ms.p99 if lv.ttft_ms else float("nan") for lv in report.levels],
            "x--",
            label=f"{label} p99",
        )
    tput.set(xlabel="concurrency", ylabel="output tokens/s", title="throughput")
    ttft.set(xlabel="concurrency", ylabel="TTFT (ms)", title="time to first token")
    levels = sorted({lv.concurrency for r in series.values() for lv in r.levels})
    for ax in (tput, ttft):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def _plot_ralph(series: dict[str, BenchReport], path: Path, title: str) -> None:
    fig, (hits, ttft) = _figure(2)
    for label, report in series.items():
        if report.ralph is None:
            continue
        its = report.ralph.iterations
        x = [it.iteration for it in its]
        rates = [
            100 * it.cache.hit_rate if it.cache and it.cache.hit_rate is not None else float("nan")
            for it in its
        ]
        hits.plot(x, rates, "o-", label=label)
        ttft.plot(
            x,
            [it.level.ttft_ms.p50 if it.level.ttft_ms else float("nan") for it in its],
            "o-",
            label=label,
        )
    hits.set(
        xlabel="iteration", ylabel="prefix-cache hit rate (%)", title="hit rate", ylim=(0, 100)
    )
    ttft.set(xlabel="iteration", ylabel="TTFT p50 (ms)", title="time to first token")
    ttft.set_ylim(bottom=0)
    for ax in (hits, ttft):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plot_bench(report: BenchReport, path: Path) -> None:
    plot_reports({report.model: report}, path, f"{report.workload} on {report.model}")


def plot_compare(report: CompareReport, path: Path) -> None:
    series = {v.label: v.report for v in report.variants if v.report is not None}
    plot_reports(series, path, f"compare on {report.model}")
