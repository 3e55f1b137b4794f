"""Render our own GPU runs' results (practicum + tests/gpu) as docs/gpu-results.md.

    python dev/gpu/render_results.py RESULTS [--out docs/gpu-results.md]

Development tooling, not in the wheel. RESULTS is the results folder or a results-*.tar.gz that
dev/gpu/gpu-device.sh left (the newest holds everything measured so far). The practicum's own
report sections come from orchestrator.practicum.report; this adds what only our runs record:
the machine, the offline bundle's install, the MIG NVML check and the tests/gpu outcomes. Plots
are copied beside the page into docs/gpu-results/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from orchestrator.practicum import report
from orchestrator.practicum.results import Results, md_table, num

STEPS = "dev/gpu/gpu-device.sh"


def section_machine(r: Results) -> list[str]:
    out = ["## The machine and the set-up", ""]
    machine = r.text("system/machine.txt")
    if machine:
        keep = [
            ln
            for ln in machine.splitlines()
            if "Driver Version" in ln or "NVIDIA" in ln or ln.startswith(("Python", "Linux"))
        ][:6]
        out += ["```", *keep, "```", ""]
    config = r.text("session/models.toml")
    if config:
        out += ["The daemon's configuration (`session/models.toml`):", ""]
        out += ["```toml", config.strip(), "```", ""]
    install = r.json("install.json")
    for name, env in (install or {}).get("environments", {}).items():
        timings = ", ".join(f"{k} {v}" for k, v in env.get("timings", {}).items())
        out.append(
            f"- bundle install, {name}: {env.get('packages')} packages, {timings}; "
            f"{len(env.get('warnings', []))} warnings"
        )
    checked = r.text("system/nvml-check.txt")
    if checked:
        out += [
            "",
            "`mig-orchestrator nvml-check` against this driver: a whole GPU is not a MIG "
            "device, so the daemon leaves its MIG NVML fix off.",
            "",
            "```",
            checked.strip(),
            "```",
        ]
    return [*out, ""]


def section_tests(r: Results) -> list[str]:
    out = ["## tests/gpu", ""]
    text = r.text("gpu-tests.xml")
    if text is None:
        return [*out, f"*Not run: `bash {STEPS} tests` runs them.*", ""]
    out += ["```", "python -m pytest tests/gpu -v -rA --junitxml results/gpu-tests.xml", "```", ""]
    rows = []
    for case in ET.fromstring(text).iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = f"{tag}: {(found.get('message') or '')[:100]}"
        rows.append([f"`{case.get('name')}`", num(case.get("time"), 1), outcome])
    return out + md_table(["test", "seconds", "outcome"], rows)


def render(results: Path, out: Path) -> str:
    r = Results(results)
    images = out.parent / out.stem
    lines = report.header(r)
    notes = r.text("NOTES.md")
    if notes:
        lines += ["## Notes on this run", "", notes.strip(), ""]
    lines += section_machine(r)
    for part in report.sections(r):
        lines += part
    lines += section_tests(r)
    text = "\n".join(lines).rstrip() + "\n"
    for png in sorted(results.glob("*/*.png")):
        images.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, images / png.name)
        text = text.replace(f"]({png.parent.name}/{png.name})", f"]({images.name}/{png.name})")
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
