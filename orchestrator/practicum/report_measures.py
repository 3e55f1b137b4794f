"""The report's measurement sections: sweep, monitor, Ralph, compare, bench vs vllm, restarts."""

from __future__ import annotations

import csv
import json
import statistics
from typing import Any

from orchestrator.bench.vs_vllm import FIGURES, GOAL, MORE, OURS, VLLM
from orchestrator.practicum.results import (
    NONE,
    Results,
    how_to_read,
    md_table,
    not_run,
    num,
)

LEVEL_HEADER = [
    "concurrency",
    "req/s",
    "output tok/s",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "ITL p50 ms",
    "ITL p99 ms",
    "completed",
    "failed",
]


def _level_row(lv: dict[str, Any]) -> list[str]:
    def q(dist: dict[str, Any] | None, key: str, digits: int = 0) -> str:
        return num(dist.get(key), digits) if dist else NONE

    return [
        str(lv["concurrency"]),
        num(lv["request_throughput"], 2),
        num(lv["output_throughput"], 0),
        q(lv["ttft_ms"], "p50"),
        q(lv["ttft_ms"], "p99"),
        q(lv["itl_ms"], "p50", 2),
        q(lv["itl_ms"], "p99", 2),
        str(lv["completed"]),
        str(lv["failed"]),
    ]


def section_sweep(r: Results) -> list[str]:
    out = ["## Concurrency sweep (`bench`)", ""]
    sweep = r.json("serve/sweep.json")
    out += r.shown("serve", "sweep")
    if sweep is None:
        return out if r.command("serve", "sweep") else out + not_run("serve")
    out += how_to_read(
        "each row keeps that many requests in flight for a fixed time against `coder`. "
        "Throughput grows with concurrency while the engine batches them; once it stops "
        "growing the GPU is saturated, and more concurrency only adds queueing, which shows "
        "as a rising time to first token (TTFT). Inter-token latency (ITL) is the pause "
        "between streamed tokens a student sees."
    )
    out += md_table(LEVEL_HEADER, [_level_row(lv) for lv in sweep["levels"]])
    return out + r.image("serve/sweep.png", "throughput and TTFT against concurrency")


def section_monitor(r: Results) -> list[str]:
    out = ["## `monitor` during the sweep", ""]
    out += r.shown("serve", "monitor")
    path = r.root / "serve" / "monitor.csv"
    if not path.exists():
        return out + not_run("serve")
    with path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["kind"] == "gpu"]
    if r.simulated:
        out += [
            "**Simulated.** A CPU rehearsal has no GPU: `monitor` read the fake NVML "
            f"topology `{r.run['simulated_gpu']}`, whose utilisation, power and clocks are "
            "constants of that file. The figures below show that the tool runs, not a load.",
            "",
        ]
    out += how_to_read(
        "NVML's SM utilisation is the share of time at least one kernel ran, not how full "
        "the GPU was; memory % is the share of time device memory was read or written. "
        "On MIG-enabled GPUs NVML gives no utilisation at all."
    )
    sm = [float(row["sm_util_pct"]) for row in rows if row["sm_util_pct"]]
    mem = [float(row["mem_util_pct"]) for row in rows if row["mem_util_pct"]]
    power = [float(row["power_w"]) for row in rows if row["power_w"]]
    if sm:
        out += md_table(
            ["samples", "SM % min / mean / max", "memory % max", "power W max"],
            [
                [
                    str(len(rows)) + (" (simulated)" if r.simulated else ""),
                    f"{min(sm):.0f} / {statistics.mean(sm):.0f} / {max(sm):.0f}",
                    num(max(mem or [0]), 0),
                    num(max(power or [0]), 0),
                ]
            ],
        )
    return out


def section_ralph(r: Results) -> list[str]:
    out = ["## The Ralph loop, prefix caching on and off", ""]
    runs = {k: r.json(f"serve/ralph-{k}.json") for k in ("on", "off")}
    for key in ("on", "off"):
        out += r.shown("serve", f"ralph-{key}")
    if not any(runs.values()):
        return out if r.command("serve", "ralph-on") else out + not_run("serve")
    out += how_to_read(
        "an agent loop re-sends one long prompt with a growing transcript. With prefix "
        "caching (`coder`) the engine reuses the KV cache of the shared prefix: the hit rate "
        "is the share of prompt tokens it did not recompute, and TTFT falls. `chat` runs with "
        "caching off: 0 % and the full prefill every time."
    )
    rows = []
    iterations = max(
        len((rep or {}).get("ralph", {}).get("iterations", [])) for rep in runs.values()
    )
    for i in range(iterations):
        row = [str(i + 1)]
        for key in ("on", "off"):
            its = (runs[key] or {}).get("ralph", {}).get("iterations", [])
            it = its[i] if i < len(its) else {}
            rate = (it.get("cache") or {}).get("hit_rate")
            ttft = (it.get("level") or {}).get("ttft_ms") or {}
            row += [num(None if rate is None else rate * 100, 0), num(ttft.get("p50"), 0)]
        rows.append(row)
    out += md_table(
        ["iteration", "on: hit %", "on: TTFT p50 ms", "off: hit %", "off: TTFT p50 ms"], rows
    )
    for key in ("on", "off"):
        whole = ((runs[key] or {}).get("ralph") or {}).get("cache") or {}
        rate = whole.get("hit_rate")
        if rate is not None:
            out.append(
                f"- caching {key}: hit rate over the run {num(rate * 100, 0)} % of "
                f"{num(whole.get('queries'), 0)} queried tokens"
            )
        elif whole:
            out.append(f"- caching {key}: the engine counted no prefix-cache queries")
    return [*out, ""]


def _compare_row(v: dict[str, Any], kv: dict[str, dict[str, Any]]) -> list[str]:
    gmu = v["settings"].get("gpu_memory_utilization")
    fig = kv.get(str(float(gmu)), {}) if gmu is not None else {}
    lv = ((v.get("report") or {}).get("levels") or [{}])[0]
    ttft = lv.get("ttft_ms") or {}
    return [
        str(gmu),
        num(fig.get("kv_cache_gib"), 2),
        num(fig.get("kv_cache_tokens"), 0),
        num(fig.get("max_concurrency"), 1),
        num(lv.get("output_throughput"), 0),
        num(lv.get("request_throughput"), 2),
        num(ttft.get("p50"), 0),
        num(ttft.get("p99"), 0),
        v["status"],
    ]


COMPARE_HEADER = [
    "gpu_memory_utilization",
    "KV cache GiB",
    "KV cache tokens",
    "max concurrency (x max_model_len)",
    "output tok/s",
    "req/s",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "status",
]


def section_compare(r: Results) -> list[str]:
    out = ["## `compare --sweep gpu_memory_utilization`", ""]
    out += r.shown("compare", "compare")
    report = r.json("compare/compare.json")
    if report is None:
        return out if r.command("compare", "compare") else out + not_run("compare")
    if r.simulated:
        out += [
            "**Caveat (CPU rehearsal):** vLLM's CPU build sizes its KV cache from "
            "`VLLM_CPU_KVCACHE_SPACE` (GiB, set here), not from gpu_memory_utilization, so "
            "the KV cache is the same in every row and any difference in throughput is noise "
            "of a shared machine, not an effect of the setting.",
            "",
        ]
    out += how_to_read(
        "`chat` is restarted once per value. vLLM reserves that fraction of the GPU's memory "
        "and gives what the weights and activations leave to the KV cache; the KV cache "
        "bounds how many sequences fit at once (max concurrency). At a high concurrency a "
        "small KV cache makes requests wait: throughput falls and TTFT rises."
    )
    kv = {
        str(float(k["gpu_memory_utilization"])): k
        for k in r.json("compare/kv.json") or []
        if k.get("gpu_memory_utilization")
    }
    out += md_table(COMPARE_HEADER, [_compare_row(v, kv) for v in report["variants"]])
    out += [f"Restored afterwards: {report.get('restored')}.", ""]
    return out + r.image("compare/compare.png", "compare across gpu_memory_utilization")


VERSUS = (*FIGURES, *MORE)


def section_versus(r: Results) -> list[str]:
    out = ["## Our `bench` against `vllm bench serve`", ""]
    out += r.shown("serve", "bench-vs-vllm")
    data = r.json("serve/bench-vs-vllm.json")
    if not data or "runs" not in data:
        return out if r.command("serve", "bench-vs-vllm") else out + not_run("serve")
    out += how_to_read(
        "both tools send the same random workload to `coder`, in turns (one run of each per "
        "pair, every other pair starting with vLLM's). Their medians should agree within "
        f"{GOAL:.0%}; where a figure of ours differs more, trust vLLM's own benchmark. Short "
        "runs and a busy machine (the load column) spread them apart."
    )
    rows = [
        [f"{run['tool']} #{run['pair']}", num(run.get("load_before"), 2)]
        + [num(run["figures"].get(key), d) for _, key, d in VERSUS]
        for run in data["runs"]
    ]
    out += md_table(["run", "load 1m", *(k for k, _, _ in VERSUS)], rows)
    ours, theirs = data.get(OURS) or {}, data.get(VLLM) or {}
    for label, key, d in FIGURES:
        a, b = ours.get(key), theirs.get(key)
        if a is not None and b:
            verdict = "within" if abs(a / b - 1) <= GOAL else "OUTSIDE"
            out.append(
                f"- {label}, medians: ours {num(a, d)}, vLLM's {num(b, d)}: {a / b - 1:+.1%} "
                f"({verdict} ±{GOAL:.0%})"
            )
    return [*out, ""]


def _restart_base(rows: list[dict[str, Any]]) -> tuple[float | None, str]:
    """The plain variant's crash to serving (same measure as every other row)."""
    plain = [x["crash_to_serving_s"] for x in rows if x.get("plain") and "crash_to_ready_s" in x]
    if plain:
        label = next(x["variant"] for x in rows if x.get("plain") and "crash_to_ready_s" in x)
        return statistics.median(plain), f"the `{label}` variant's median (standby off, spawn)"
    return None, ""


CRASH_STEPS = (
    "crash_to_detected_s",
    "crash_to_relaunch_s",
    "crash_to_ready_s",
    "crash_to_serving_s",
)


def _crash_cells(x: dict[str, Any], event: str, base: float | None) -> list[str]:
    """One crash's steps (or their medians), and serving against the plain variant."""
    ratio = x["crash_to_serving_s"] / base if base else None
    steps = [num(x[k], 2 if k == "crash_to_detected_s" else 1) for k in CRASH_STEPS]
    return [x["variant"], event, *steps, num(ratio, 2)]


def _restart_row(x: dict[str, Any], base: float | None) -> list[str]:
    if "error" in x:
        return [x["variant"], "**FAILED**: " + x["error"][:160].replace("\n", " "), *[NONE] * 5]
    if "crash_to_ready_s" in x:
        return _crash_cells(x, f"crash #{x['repeat']}", base)
    if x.get("variant") == "vllm-direct":
        ready = num(x["launch_to_ready_s"], 1)
        return ["plain vLLM (no daemon)", f"launch #{x['repeat']}", NONE, NONE, ready, NONE, NONE]
    event = f"switched to {json.dumps(x.get('settings'))} in {num(x.get('switch_s'), 1)} s"
    return [x["variant"], event, *[NONE] * 5]


def section_restarts(r: Results) -> list[str]:
    out = ["## Restarts: crash to serving again", ""]
    out += r.shown("restarts", "restarts")
    rows = r.json("restarts/restarts.json")
    if rows is None:
        return out if r.command("restarts", "restarts") else out + not_run("restarts")
    base, what = _restart_base(rows)
    out += how_to_read(
        "the API server of the `--restart-model` engine is killed (SIGKILL) and the daemon "
        "brings it back. Seconds "
        "from the kill until the daemon saw it (detected), started a new engine (relaunched), "
        "the engine answered /health (ready) and served a completion (serving). The last "
        + (
            f"column divides serving by {what}, {base:.1f} s: below 1 is faster than vLLM "
            "restarting by itself."
            if base
            else "column stays empty: no plain variant (standby=false) was measured."
        )
    )
    header = ["variant", "event", "detected s", "relaunched s", "ready s", "serving s", "x plain"]
    out += md_table(header, [_restart_row(x, base) for x in rows])
    return out + md_table(header, _restart_medians(rows, base))


def _restart_medians(rows: list[dict[str, Any]], base: float | None) -> list[list[str]]:
    """Per variant, the median of each column over its crashes."""
    crashes: dict[str, list[dict[str, Any]]] = {}
    for x in rows:
        if "crash_to_ready_s" in x:
            crashes.setdefault(x["variant"], []).append(x)
    return [
        _crash_cells(
            {"variant": variant, **{k: statistics.median(x[k] for x in xs) for k in CRASH_STEPS}},
            f"median of {len(xs)} crashes",
            base,
        )
        for variant, xs in crashes.items()
    ]
