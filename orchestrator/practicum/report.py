"""RESULTS/report.md: one Markdown page of everything a practicum run measured.

Every table names the command behind it and says how to read it; a step that failed shows as
failed with its error; what a CPU rehearsal only simulates is marked. Plots are PNG files in the
results folder, linked from the page.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from orchestrator.practicum.report_measures import (
    section_compare,
    section_monitor,
    section_ralph,
    section_restarts,
    section_sweep,
    section_versus,
)
from orchestrator.practicum.results import (
    NONE,
    Results,
    failed_block,
    how_to_read,
    md_table,
    not_run,
    num,
)


def _when(epoch: float | None) -> str:
    if not epoch:
        return NONE
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def _model_line(run: dict[str, Any]) -> str:
    shape = run.get("model_config") or {}
    text = f"`{run.get('model', 'unknown')}`"
    if shape.get("num_hidden_layers"):
        text += (
            f" ({', '.join(shape.get('architectures') or [])}: {shape['num_hidden_layers']} "
            f"layers, hidden {shape.get('hidden_size')}, {shape.get('num_attention_heads')} heads)"
        )
    return text


def header(r: Results) -> list[str]:
    run = r.run
    device = run.get("device", "unknown device (the `up` phase did not run)")
    out = [f"# vLLM practicum through mig-orchestrator: {device}", ""]
    if r.simulated:
        out += [
            f"**CPU rehearsal** on {run.get('cores')} cores ({run.get('cpu') or 'CPU'}): the "
            "engines are vLLM's CPU build and the GPU is simulated (fake NVML topology "
            f"`{run['simulated_gpu']}`). Timings are this machine's, not a GPU's; what only a "
            "GPU can show is marked as simulated below.",
            "",
        ]
    load = [num(x, 2) for x in (run.get("load_at_start") or [None])[:1]]
    load += [num(x, 2) for x in (run.get("load_at_end") or [None])[:1]]
    facts = [
        ("device", device),
        ("engine", run.get("engine") or NONE),
        ("model", _model_line(run)),
        (
            "workload",
            f"random prompts of {run.get('input_len', NONE)} tokens, "
            f"{run.get('output_len', NONE)} output tokens (ignore_eos)",
        ),
        ("preset", run.get("preset") or NONE),
        ("ran", f"{_when(run.get('started'))} to {_when(run.get('ended'))}"),
        ("load average (1 min) at start / end", " / ".join(load)),
    ]
    return out + [f"- {k}: {v}" for k, v in facts] + [""]


def section_steps(r: Results) -> list[str]:
    out = ["## Steps", ""]
    if not r.commands:
        return [*out, "*Nothing ran yet.*", ""]
    failed = r.failures()
    if failed:
        out += [f"**{len(failed)} step(s) FAILED**: " + ", ".join(_step(c) for c in failed), ""]
    rows = []
    for c in r.commands:
        status = "ok" if c["exit_code"] == 0 else "**FAILED**"
        rows.append([c["phase"], c["label"], status, num(c["seconds"], 0)])
    out += md_table(["phase", "step", "status", "seconds"], rows)
    for c in failed:
        out += [f"### {_step(c)}", "", *failed_block(c)]
    return out


def _step(c: dict[str, Any]) -> str:
    return f"{c['phase']}/{c['label']}"


STARTUP_COLUMNS = (
    ("imports (API server)", "imports_api_server_s"),
    ("until EngineCore runs", "until_engine_core_s"),
    ("weights", "weights_s"),
    ("torch.compile", "compile_s"),
    ("CUDA graphs", "graphs_s"),
    ("after graphs until ready", "after_graphs_until_ready_s"),
    ("launch to ready", "total_s"),
)


def section_startup(r: Results) -> list[str]:
    out = ["## Engine start-up", ""]
    if not r.startups:
        return out + not_run("up")
    out += how_to_read(
        "seconds per phase of each engine launch, read from the engine log the daemon keeps "
        "(vLLM's own figures for weights, compile and graphs; its timestamps, to the second, "
        "for the rest). Most of a start is Python importing vLLM, twice (API server, then "
        "EngineCore); a launch from a standby starts at its trigger, its imports done before. "
        "A dash: the log did not show that phase (a CPU engine compiles nothing and captures "
        "no CUDA graphs)."
    )
    rows = []
    for s in r.startups:
        which = s.get("variant") or f"#{s.get('order', '')}"
        label = f"{s['phase']} {which} {s['model']}"
        cells = [num(s["phases"].get(k)) for _, k in STARTUP_COLUMNS]
        if s.get("via") == "standby":
            label += " (from its standby)"
            cells[0] = "in the standby"
        rows.append([label, s.get("cache", ""), *cells])
    return out + md_table(["launch", "caches", *(h for h, _ in STARTUP_COLUMNS)], rows)


def section_teardown(r: Results) -> list[str]:
    out = ["## Daemon stop (SIGTERM)", ""]
    down = r.json("down/teardown.json")
    if down is None:
        return out + not_run("down")
    out += how_to_read(
        "the daemon is stopped as systemd stops it. It must exit with no engine process "
        "left behind, and the GPU's memory must be back to what it was before `up`."
        + (
            " GPU memory here is the simulated topology's, not a measurement."
            if r.simulated
            else ""
        )
    )
    return out + md_table(
        list(down), [[num(v, 1) if isinstance(v, float) else str(v) for v in down.values()]]
    )


def sections(r: Results) -> list[list[str]]:
    """Every section after the header, in the order the practicum runs them."""
    return [
        section_steps(r),
        section_startup(r),
        section_sweep(r),
        section_monitor(r),
        section_ralph(r),
        section_compare(r),
        section_versus(r),
        section_restarts(r),
        section_teardown(r),
    ]


def render(results: Path, out: Path) -> str:
    """Write the report of the results folder to `out`; its text."""
    r = Results(results)
    lines = header(r)
    notes = r.text("NOTES.md")  # what the instructor writes about this run
    if notes:
        lines += ["## Notes on this run", "", notes.strip(), ""]
    for part in sections(r):
        lines += part
    text = "\n".join(lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
