"""`mig-orchestrator practicum` end to end with the stand-in engine on a simulated GPU: every
phase one by one, and the whole sequence without matplotlib (about 90 s)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from orchestrator.cli.main import main as cli
from orchestrator.practicum.session import Session, session_pids
from tests.daemon_harness import STANDIN

SMALL = [
    "--levels", "1,2", "--level-seconds", "1", "--input-len", "16", "--output-len", "8",
    "--loops", "2", "--iterations", "2", "--vs-prompts", "4", "--rounds", "1",
    "--utilizations", "0.2,0.3", "--compare-concurrency", "2", "--compare-requests", "4",
]  # fmt: skip


def _common(results: Path) -> list[str]:
    return [
        "--results", str(results), "--cpu", "--model", "standin",
        "--engine-command", json.dumps([sys.executable, str(STANDIN)]),
        "--engine-env", "STANDIN_SPAWN_GRANDCHILD=1",
    ]  # fmt: skip


def _stop_leftover(results: Path) -> None:
    handle = results / "session" / "session.json"
    if handle.exists() and Session.load(handle).alive():
        Session.load(handle).stop()


def _commands(results: Path) -> dict[tuple[str, str], int | None]:
    lines = (results / "commands.jsonl").read_text().splitlines()
    return {(c["phase"], c["label"]): c["exit_code"] for c in map(json.loads, lines)}


def test_phases_one_by_one_record_their_commands_and_a_failed_step_fails_the_phase(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    common = _common(results)
    try:
        assert cli(["practicum", "up", *common]) == 0
        # no vLLM in this venv: `vllm bench serve` fails, so the phase does, after the rest ran
        assert cli(["practicum", "serve", *common, *SMALL]) == 1
        assert cli(["practicum", "compare", *common, *SMALL]) == 0
        variants = ["--variant", "plain:standby=false", "--variant", "default:standby=true"]
        assert cli(["practicum", "restarts", *common, *variants]) == 0
        bogus = ["--variant", "bogus:no_such_setting=1"]
        assert cli(["practicum", "restarts", *common, *bogus]) == 1
        assert cli(["practicum", "down", *common]) == 0
        assert cli(["practicum", "report", "--results", str(results)]) == 0
    finally:
        _stop_leftover(results)
    assert session_pids(results / "session") == []

    ran = _commands(results)
    assert ran[("serve", "sweep")] == 0 and ran[("compare", "compare")] == 0
    assert ran[("serve", "ralph-on")] == 0 and ran[("serve", "ralph-off")] == 0
    assert ran[("serve", "bench-vs-vllm")] != 0
    rows = json.loads((results / "restarts" / "restarts.json").read_text())
    crash = next(r for r in rows if r["variant"] == "plain" and "crash_to_ready_s" in r)
    assert crash["plain"] and crash["settings"] == {"standby": False}
    assert 0 < crash["crash_to_detected_s"] <= crash["crash_to_ready_s"]
    assert len(crash["killed_pids"]) == 2  # the server and its "VLLM::EngineCore"
    assert any(r["variant"] == "default" and "crash_to_ready_s" in r for r in rows)
    assert "no_such_setting" in next(r for r in rows if r["variant"] == "bogus")["error"]
    teardown = json.loads((results / "down" / "teardown.json").read_text())
    assert teardown["exited"] and teardown["left_running"] == []

    text = (results / "report.md").read_text()
    assert text.startswith("# vLLM practicum through mig-orchestrator: CPU rehearsal")
    assert "random prompts of 16 tokens, 8 output tokens" in text
    assert "| 2 |" in text and "![throughput and TTFT" in text
    assert (results / "serve" / "sweep.png").exists()
    assert "**Simulated.**" in text and "VLLM_CPU_KVCACHE_SPACE" in text
    assert "| serve | bench-vs-vllm | **FAILED** |" in text
    # the error is the failed command's own: no `vllm` in this venv
    assert "### serve/bench-vs-vllm" in text and "bin/vllm" in text
    # the baseline is the plain variant's own crash, not the default compared with itself
    plain_row = next(ln for ln in text.splitlines() if ln.startswith("| plain | crash #1 |"))
    assert plain_row.rstrip().endswith("| 1.00 |")
    assert "| bogus | **FAILED**: " in text
    assert "issue" not in text.lower()


def test_the_whole_sequence_without_matplotlib_keeps_the_numbers_and_always_tears_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    results = tmp_path / "results"
    variants = ["--variant", "plain:standby=false"]
    try:
        code = cli(["practicum", *_common(results), *SMALL, *variants])
    finally:
        _stop_leftover(results)
    assert code == 1  # bench-vs-vllm failed; every other step ran
    assert session_pids(results / "session") == []
    out = capsys.readouterr().out
    assert "[practicum] estimate" in out and "warning: plots skipped, numbers kept" in out
    ran = _commands(results)
    assert ran[("down", "down")] == 0 and ran[("restarts", "restarts")] == 0
    assert json.loads((results / "serve" / "sweep.json").read_text())["levels"]
    assert json.loads((results / "compare" / "compare.json").read_text())["variants"]
    assert not list(results.glob("*/*.png"))
    text = (results / "report.md").read_text()
    assert "No plot (throughput and TTFT against concurrency): matplotlib is not installed" in text
    assert "| 1 |" in text and "| 0.2 |" in text
