"""A practicum's results folder, read leniently, and the Markdown pieces every section uses."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

NONE = "-"  # a cell with no value


def num(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return NONE
    try:
        return f"{float(value):,.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def how_to_read(text: str) -> list[str]:
    return [f"*How to read it:* {text}", ""]


class Results:
    """The files of one results folder: a missing file is a part not run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.commands = list(self._jsonl("commands.jsonl"))
        self.startups = list(self._jsonl("startups.jsonl"))
        self.run: dict[str, Any] = self.json("run.json") or {}

    @property
    def simulated(self) -> bool:
        """True for a CPU rehearsal: the GPU that NVML shows is a fake topology's constants."""
        return bool(self.run.get("simulated_gpu"))

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

    def failures(self) -> list[dict[str, Any]]:
        """The latest record of every step whose latest run failed."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.commands:
            latest[(c["phase"], c["label"])] = c
        return [c for c in latest.values() if c.get("exit_code") != 0]

    def shown(self, phase: str, label: str) -> list[str]:
        """The command as run, and its failure with the error when it failed."""
        cmd = self.command(phase, label)
        if cmd is None:
            return []
        code = cmd["exit_code"]
        took = f"{cmd['seconds']:.0f} s, exit {code}"
        out = [f"Command ({took}):", "", "```", cmd["command"], "```", ""] if cmd["argv"] else []
        if code != 0:
            out += failed_block(cmd)
        return out

    def image(self, name: str, alt: str) -> list[str]:
        """A plot beside the report (paths relative to the results folder)."""
        if (self.root / name).exists():
            return [f"![{alt}]({name})", ""]
        if self.run.get("plots_skipped"):
            return [
                f"*No plot ({alt}): {self.run['plots_skipped']}. The numbers above are complete.*",
                "",
            ]
        return []


def failed_block(cmd: dict[str, Any]) -> list[str]:
    code = cmd.get("exit_code")
    why = "timed out" if code is None else f"exit {code}"
    error = (cmd.get("error") or "no output").strip()
    return [f"**FAILED** ({why}). Its error:", "", "```", error, "```", ""]


def not_run(phase: str) -> list[str]:
    return [f"*Not run: `mig-orchestrator practicum {phase}` measures it.*", ""]
