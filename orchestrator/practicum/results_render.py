"""Render the GPU session's results (practicum + tests/gpu) as docs/gpu-results.md.

    python -m orchestrator.practicum.results_render RESULTS [--out docs/gpu-results.md]

RESULTS is the results folder or a results-*.tar.gz that the GPU machine sent back (the newest
holds everything measured so far). Every table names the exact command behind it; a part that
was not run says so and which step runs it. Charts go beside the page in docs/gpu-results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.bench.report import LEVEL_HEADER, level_row, number

PHASE_STEP = {
    "up": "bash deploy/gpu-device.sh up",
    "serve": "bash deploy/gpu-device.sh serve",
    "compare": "bash deploy/gpu-device.sh compare",
    "restarts": "bash deploy/gpu-device.sh restarts --variant ...",
    "down": "bash deploy/gpu-device.sh down",
    "tests": "bash deploy/gpu-device.sh tests",
}
NONE = "-"  # a cell with no value
# bench vs vllm bench serve must agree this closely (issue 12, 3d).
AGREEMENT = 0.05
RESTART_GOAL = 0.35  # crash to serving, as a fraction of plain vLLM's restart (issue 16)


def md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    rows = list(rows)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


class Results:
    """The files of one results folder, read leniently: a missing file is a part not run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.commands = list(self._jsonl("commands.jsonl"))
        self.startups = list(self._jsonl("startups.jsonl"))

    def _jsonl(self, name: str) -> Iterable[dict[str, Any]]:
        path = self.root / name
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    yield json.loads(line)

    def json(self, name: str) -> Any:
        """A file's JSON; None when it is missing or cut short (a command stopped midway)."""
        try:
            return json.loads((self.root / name).read_text())
        except (OSError, ValueError):
            return None

    def text(self, name: str) -> str | None:
        path = self.root / name
        return path.read_text(errors="replace") if path.exists() else None

    def command(self, phase: str, label: str) -> dict[str, Any] | None:
        found = [c for c in self.commands if c["phase"] == phase and c["label"] == label]
        return found[-1] if found else None

    def shown(self, phase: str, label: str) -> list[str]:
        """The command as run (interpreter and results paths as on the GPU machine)."""
        cmd = self.command(phase, label)
        if cmd is None:
            return []
        took = f"{cmd['seconds']:.0f} s, exit {cmd['exit_code']}"
        return [f"Command ({took}):", "", "```", cmd["command"], "```", ""]


def not_run(phase: str) -> list[str]:
    return [f"*Not run yet: `{PHASE_STEP[phase]}` measures it.*", ""]


def section_machine(r: Results) -> list[str]:
    out = ["## The machine and the set-up", ""]
    machine = r.text("system/machine.txt")
    if machine:
        keep = [
            ln
            for ln in machine.splitlines()
            if "Driver Version" in ln or "H200" in ln or ln.startswith(("Python", "Linux"))
        ][:6]
        out += ["```", *keep, "```", ""]
    config = r.text("session/models.toml")
    if config:
        out += [
            "The daemon's configuration (`session/models.toml`):",
            "",
            "```toml",
            config.strip(),
            "```",
            "",
        ]
    install = r.json("install.json")
    if install:
        for name, env in install.get("environments", {}).items():
            timings = ", ".join(f"{k} {v}" for k, v in env.get("timings", {}).items())
            out.append(
                f"- bundle install, {name}: {env.get('packages')} packages, {timings}; "
                f"{len(env.get('warnings', []))} warnings"
            )
        out.append("")
    checked = r.text("system/nvml-check.txt")
    if checked:
        out += [
            "The MIG NVML fix's lookups against this driver (`mig-orchestrator nvml-check`, "
            "issue 10): a whole GPU is not a MIG device, so the daemon leaves the fix off.",
            "",
            "```",
            checked.strip(),
            "```",
            "",
        ]
    return out


STARTUP_COLUMNS = (
    ("imports (API server)", "imports_api_server_s"),
    ("until EngineCore runs", "until_engine_core_s"),
    ("weights", "weights_s"),
    ("torch.compile", "compile_s"),
    ("CUDA graphs", "graphs_s"),
    ("after graphs until ready (JIT, warm-up)", "after_graphs_until_ready_s"),
    ("launch to ready", "total_s"),
)


def section_startup(r: Results) -> list[str]:
    out = ["## (e) Start-up, cold and warm", ""]
    if not r.startups:
        return out + not_run("up")
    out += [
        "Seconds per phase of each engine launch, from the engine log the daemon keeps "
        "(vLLM's own figures for weights, compile and graphs; timestamps, to the second, "
        "for the rest) and the launch and ready times the practicum saw. A launch from a "
        "standby starts at its trigger: the API server's imports were done before.",
        "",
    ]
    rows = []
    for s in r.startups:
        which = s.get("variant") or f"#{s.get('order', '')}"
        label = f"{s['phase']} {which} {s['model']}"
        cells = [number(s["phases"].get(k)) for _, k in STARTUP_COLUMNS]
        if s.get("via") == "standby":
            label += " (from its standby)"
            cells[0] = "in the standby"
        rows.append([label, s.get("cache", ""), s.get("compile_cache") or NONE, *cells])
    out += md_table(["launch", "caches", "compile cache", *(h for h, _ in STARTUP_COLUMNS)], rows)
    caches = r.json("up/caches.json")
    if caches:
        out += [
            "Caches after the first start, and whether the systemd unit keeps them across "
            "restarts (HOME=/var/lib/mig-orchestrator is kept; PrivateTmp gives each start "
            "an empty /tmp):",
            "",
        ]
        out += md_table(
            ["cache", "MiB", "kept by the unit"],
            [
                [f"`{p}`", number(c["mib"]), "yes" if c["kept_by_unit"] else "no"]
                for p, c in caches.items()
            ],
        )
    return out


def section_sweep(r: Results, images: Path) -> list[str]:
    out = ["## (a) Concurrency sweep (`bench`)", ""]
    sweep = r.json("serve/sweep.json")
    if sweep is None:
        return out + not_run("serve")
    out += r.shown("serve", "sweep")
    out += md_table(LEVEL_HEADER, [level_row(lv) for lv in sweep["levels"]])
    out += _image(r, "serve/sweep.png", images, "bench --plot of the sweep")
    return out


def _image(r: Results, name: str, images: Path, alt: str) -> list[str]:
    src = r.root / name
    if not src.exists():
        return []
    images.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, images / src.name)
    return [f"![{alt}]({images.name}/{src.name})", ""]


def section_monitor(r: Results, images: Path) -> list[str]:
    out = ["## (f) `monitor` during the sweep", ""]
    path = r.root / "serve" / "monitor.csv"
    if not path.exists():
        return out + not_run("serve")
    out += r.shown("serve", "monitor")
    with path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["kind"] == "gpu"]
    sm = [float(row["sm_util_pct"]) for row in rows if row["sm_util_pct"]]
    mem = [float(row["mem_util_pct"]) for row in rows if row["mem_util_pct"]]
    power = [float(row["power_w"]) for row in rows if row["power_w"]]
    if sm:
        out += md_table(
            ["samples", "SM % min / mean / max", "memory % max", "power W max"],
            [
                [
                    str(len(rows)),
                    f"{min(sm):.0f} / {statistics.mean(sm):.0f} / {max(sm):.0f}",
                    number(max(mem or [0]), 0),
                    number(max(power or [0]), 0),
                ]
            ],
        )
    out += _plot_monitor(rows, images)
    return out


def _plot_monitor(rows: list[dict[str, str]], images: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["*(matplotlib missing here: no trace chart)*", ""]
    if not rows:
        return []
    from datetime import datetime

    t0 = datetime.fromisoformat(rows[0]["time"])
    xs = [(datetime.fromisoformat(row["time"]) - t0).total_seconds() for row in rows]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for key, label in (("sm_util_pct", "SM %"), ("mem_util_pct", "memory bandwidth %")):
        ax.plot(xs, [float(row[key] or 0) for row in rows], label=label)
    ax.set_xlabel("seconds into the sweep")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("monitor --interval 0.5 during the concurrency sweep")
    images.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(images / "monitor.png", dpi=110)
    plt.close(fig)
    return [f"![monitor trace]({images.name}/monitor.png)", ""]


def section_ralph(r: Results) -> list[str]:
    out = ["## (b) The Ralph loop, prefix caching on and off", ""]
    runs = {k: r.json(f"serve/ralph-{k}.json") for k in ("on", "off")}
    if not any(runs.values()):
        return out + not_run("serve")
    for key in ("on", "off"):
        out += r.shown("serve", f"ralph-{key}")
    rows = []
    iterations = max(
        len((rep or {}).get("ralph", {}).get("iterations", [])) for rep in runs.values()
    )
    for i in range(iterations):
        row = [str(i + 1)]
        for key in ("on", "off"):
            its = (runs[key] or {}).get("ralph", {}).get("iterations", [])
            it = its[i] if i < len(its) else None
            cache = (it or {}).get("cache") or {}
            ttft = ((it or {}).get("level") or {}).get("ttft_ms") or {}
            rows_hit = cache.get("hit_rate")
            row += [
                number(None if rows_hit is None else rows_hit * 100, 0),
                number(ttft.get("p50"), 0),
            ]
        rows.append(row)
    out += md_table(
        ["iteration", "on: hit %", "on: TTFT p50 ms", "off: hit %", "off: TTFT p50 ms"], rows
    )
    for key in ("on", "off"):
        whole = ((runs[key] or {}).get("ralph") or {}).get("cache") or {}
        if whole:
            rate = whole.get("hit_rate")
            out.append(
                f"- caching {key}: hit rate over the run "
                f"{number(None if rate is None else rate * 100, 0)} % of "
                f"{number(whole.get('queries'), 0)} queried tokens"
            )
    return [*out, ""]


def section_compare(r: Results, images: Path) -> list[str]:
    out = ["## (c) `compare --sweep gpu_memory_utilization`", ""]
    report = r.json("compare/compare.json")
    if report is None:
        return out + not_run("compare")
    out += r.shown("compare", "compare")
    kv = {
        str(float(k["gpu_memory_utilization"])): k
        for k in r.json("compare/kv.json") or []
        if k.get("gpu_memory_utilization")
    }
    rows = []
    for v in report["variants"]:
        gmu = v["settings"].get("gpu_memory_utilization")
        fig = kv.get(str(float(gmu)), {}) if gmu is not None else {}
        lv = ((v.get("report") or {}).get("levels") or [{}])[0]
        ttft = lv.get("ttft_ms") or {}
        rows.append(
            [
                str(gmu),
                number(fig.get("kv_cache_gib"), 2),
                number(fig.get("kv_cache_tokens"), 0),
                number(fig.get("max_concurrency"), 1),
                number(lv.get("output_throughput"), 0),
                number(lv.get("request_throughput"), 2),
                number(ttft.get("p50"), 0),
                number(ttft.get("p99"), 0),
                v["status"],
            ]
        )
    out += md_table(
        [
            "gpu_memory_utilization",
            "KV cache GiB",
            "KV cache tokens",
            "max concurrency (x max_model_len)",
            "output tok/s",
            "req/s",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "status",
        ],
        rows,
    )
    out.append(f"Restored afterwards: {report.get('restored')}.")
    out.append("")
    out += _image(r, "compare/compare.png", images, "compare --plot")
    return out


def section_versus(r: Results) -> list[str]:
    out = ["## (d) Our `bench` against `vllm bench serve`, alternating rounds", ""]
    runs = r.json("serve/bench-vs-vllm.json")
    if runs is None:
        return out + not_run("serve")
    out += r.shown("serve", "bench-vs-vllm")
    keys = (
        ("output tok/s", "output_throughput", 0),
        ("req/s", "request_throughput", 2),
        ("TTFT p50 ms", "p50_ttft_ms", 1),
        ("TPOT p50 ms", "p50_tpot_ms", 2),
        ("ITL p50 ms", "p50_itl_ms", 2),
        ("mean input tokens", "mean_input_tokens", 1),
    )
    out += md_table(
        ["run", *(k for k, _, _ in keys)],
        [[name, *(number(res.get(key), d) for _, key, d in keys)] for name, res in runs.items()],
    )
    ours = [res for name, res in runs.items() if name.startswith("mig-orchestrator")]
    theirs = [res for name, res in runs.items() if name.startswith("vllm bench")]
    for label, key in (("output tokens/s", "output_throughput"), ("TTFT p50", "p50_ttft_ms")):
        a = [float(x[key]) for x in ours if x.get(key) is not None]
        b = [float(x[key]) for x in theirs if x.get(key) is not None]
        if a and b:
            diff = statistics.mean(a) / statistics.mean(b) - 1
            verdict = "within" if abs(diff) <= AGREEMENT else "OUTSIDE"
            out.append(
                f"- {label}: ours {statistics.mean(a):,.1f}, vllm bench "
                f"{statistics.mean(b):,.1f}: {diff:+.1%} ({verdict} ±{AGREEMENT:.0%})"
            )
    return [*out, ""]


def _restart_base(rows: list[dict[str, Any]]) -> tuple[float | None, str]:
    """Plain vLLM's restart: launched by hand when measured (--direct), else under the daemon."""
    direct = [
        x["launch_to_ready_s"]
        for x in rows
        if x.get("variant") == "vllm-direct" and x.get("launch_to_ready_s")
    ]
    if direct:
        return statistics.mean(direct), "plain vLLM launched by hand, launch to ready"
    plain = [
        x["crash_to_serving_s"]
        for x in rows
        if x.get("variant") in ("daemon", "plain") and x.get("crash_to_serving_s")
    ]
    if plain:
        return statistics.mean(plain), "the daemon's relaunch of plain vLLM, crash to serving"
    return None, "no plain vLLM restart measured"


def _restart_row(x: dict[str, Any], base: float | None) -> list[str]:
    if "error" in x:
        return [x["variant"], "error: " + x["error"][:80], *[NONE] * 5]
    if "crash_to_ready_s" in x:
        ratio = x["crash_to_serving_s"] / base if base else None
        mark = "" if ratio is None else (" ✓" if ratio <= RESTART_GOAL else "")
        return [
            x["variant"],
            f"crash #{x['repeat']}",
            number(x["crash_to_detected_s"], 2),
            number(x["crash_to_relaunch_s"], 1),
            number(x["crash_to_ready_s"], 1),
            number(x["crash_to_serving_s"], 1),
            number(ratio, 2) + mark,
        ]
    if x.get("variant") == "vllm-direct":
        return [
            "plain vLLM (no daemon)",
            f"launch #{x['repeat']}",
            NONE,
            NONE,
            number(x["launch_to_ready_s"], 1),
            NONE,
            NONE,
        ]
    return [
        x["variant"],
        f"switch to {json.dumps(x.get('settings'))}",
        NONE,
        NONE,
        number(x.get("switch_s"), 1),
        NONE,
        NONE,
    ]


def section_restarts(r: Results) -> list[str]:
    out = ["## Restarts: crash to ready (issue 16)", ""]
    rows = r.json("restarts/restarts.json")
    if rows is None:
        return out + not_run("restarts")
    for c in r.commands:
        if c["phase"] == "restarts" and c["label"] == "restarts":
            out += ["```", c["command"], "```", ""]
    base, what = _restart_base(rows)
    out += [
        f"Seconds from the SIGKILL of the API server. The ratio is against {what}"
        + ("" if base is None else f" ({base:.1f} s)")
        + ".",
        "",
    ]
    header = [
        "variant",
        "event",
        "detected s",
        "relaunched s",
        "ready s",
        "serving s",
        f"x plain vLLM (goal <= {RESTART_GOAL})",
    ]
    return out + md_table(header, [_restart_row(x, base) for x in rows])


def section_tests(r: Results) -> list[str]:
    out = ["## tests/gpu on the H200", ""]
    text = r.text("gpu-tests.xml")
    if text is None:
        return out + not_run("tests")
    out += ["```", "python -m pytest tests/gpu -v -rA --junitxml results/gpu-tests.xml", "```", ""]
    rows = []
    for case in ET.fromstring(text).iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = f"{tag}: {(found.get('message') or '')[:100]}"
        rows.append([f"`{case.get('name')}`", number(case.get("time"), 1), outcome])
    return out + md_table(["test", "seconds", "outcome"], rows)


def section_teardown(r: Results) -> list[str]:
    out = ["## Daemon SIGTERM", ""]
    down = r.json("down/teardown.json")
    if down is None:
        return [*out, "*The practicum's daemon was stopped by tests/gpu (test_d), or not yet.*", ""]
    return out + md_table(
        list(down), [[number(v, 1) if isinstance(v, float) else str(v) for v in down.values()]]
    )


def render(results: Path, out: Path) -> str:
    r = Results(results)
    images = out.parent / out.stem
    lines = [
        "# vLLM on an H200 through mig-orchestrator: measured",
        "",
        "Generated by `python -m orchestrator.practicum.results_render` from what the GPU machine "
        "sent back (docs/gpu-howto.md says how to run it). Model: the `llama-1b` random-weight "
        "Llama built locally (16 layers, hidden 2048, 16 heads of 128, 0.83 B parameters, "
        "bf16); workload: random prompts of 512 tokens, 128 output tokens (ignore_eos).",
        "",
    ]
    notes = r.text("NOTES.md")  # what the person who ran the session says about it
    if notes:
        lines += ["## Notes on this run", "", notes.strip(), ""]
    if not (r.commands or r.startups or (results / "gpu-tests.xml").exists()):
        lines += [
            "*No GPU session has sent results yet: every section below says which step "
            "measures it.*",
            "",
        ]
    for part in (
        section_machine(r),
        section_startup(r),
        section_sweep(r, images),
        section_monitor(r, images),
        section_ralph(r),
        section_compare(r, images),
        section_versus(r),
        section_restarts(r),
        section_tests(r),
        section_teardown(r),
    ):
        lines += part
    text = "\n".join(lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def _unpacked(path: Path, tmp: Path) -> Path:
    if path.is_dir():
        return path
    with tarfile.open(path) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("results", type=Path, help="results folder or results-*.tar.gz")
    p.add_argument("--out", type=Path, default=Path("docs/gpu-results.md"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        render(_unpacked(args.results, Path(tmp)), args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
