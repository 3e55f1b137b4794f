"""Every practicum phase and the renderer, end to end, with the stand-in engine on a simulated
GPU: what runs on the GPU machine must not fail there on a typo (about 40 s)."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

from orchestrator.practicum import results_render as gpu_results
from orchestrator.practicum import run as practicum
from orchestrator.practicum.session import Session, session_pids
from tests.daemon_harness import STANDIN


def test_all_phases_record_their_commands_and_render(tmp_path: Path) -> None:
    results = tmp_path / "results"
    common = [
        "--results",
        str(results),
        "--cpu",
        "--engine-venv",
        sys.prefix,
        "--model",
        "standin",
        "--engine-command",
        json.dumps([sys.executable, str(STANDIN)]),
        "--engine-env",
        "STANDIN_SPAWN_GRANDCHILD=1",
    ]
    small = [
        "--levels",
        "1,2",
        "--level-seconds",
        "1",
        "--input-len",
        "16",
        "--output-len",
        "8",
        "--loops",
        "2",
        "--iterations",
        "2",
        "--vs-prompts",
        "4",
        "--rounds",
        "1",
    ]
    try:
        assert practicum.main(["up", *common]) == 0
        assert practicum.main(["serve", *common, *small]) == 0
        assert (
            practicum.main(
                [
                    "compare",
                    *common,
                    "--utilizations",
                    "0.2,0.3",
                    "--compare-concurrency",
                    "2",
                    "--compare-requests",
                    "4",
                    "--input-len",
                    "16",
                    "--output-len",
                    "8",
                ]
            )
            == 0
        )
        assert (
            practicum.main(
                [
                    "restarts",
                    *common,
                    "--variant",
                    "daemon:",
                    "--variant",
                    "no-standby:standby=false",
                    "--variant",
                    "bogus:no_such_setting=1",
                    "--repeat",
                    "1",
                ]
            )
            == 0
        )
        assert practicum.main(["down", *common]) == 0
        assert practicum.main(["pack", *common, "--dest", str(tmp_path / "out")]) == 0
    finally:
        handle = results / "session" / "session.json"
        if handle.exists() and Session.load(handle).alive():
            Session.load(handle).stop()
    assert session_pids(results / "session") == []

    commands = [json.loads(line) for line in (results / "commands.jsonl").read_text().splitlines()]
    ran = {(c["phase"], c["label"]): c["exit_code"] for c in commands}
    assert ran[("serve", "sweep")] == 0 and ran[("compare", "compare")] == 0
    assert ran[("serve", "ralph-on")] == 0 and ran[("serve", "ralph-off")] == 0
    assert ran[("serve", "bench-vs-vllm")] != 0  # no vLLM in this venv: recorded, not fatal
    restarts = json.loads((results / "restarts" / "restarts.json").read_text())
    crash = next(r for r in restarts if "crash_to_ready_s" in r)
    assert 0 < crash["crash_to_detected_s"] <= crash["crash_to_ready_s"]
    assert len(crash["killed_pids"]) == 2  # the server and its "VLLM::EngineCore"
    # standby is no restart override: switched in models.toml by a reload, then crashed
    switched = next(r for r in restarts if r["variant"] == "no-standby" and "settings" in r)
    assert switched["settings"] == {"standby": False}
    assert any(r["variant"] == "no-standby" and "crash_to_ready_s" in r for r in restarts)
    refused = next(r for r in restarts if r["variant"] == "bogus")
    assert "no_such_setting" in refused["error"]
    teardown = json.loads((results / "down" / "teardown.json").read_text())
    assert teardown["exited"] and teardown["left_running"] == []

    (packed,) = (tmp_path / "out").glob("practicum-*.tar.gz")
    with tarfile.open(packed) as tar:
        assert "results/serve/sweep.json" in tar.getnames()
    text = gpu_results.render(results, tmp_path / "docs" / "gpu-results.md")
    assert "## (a) Concurrency sweep" in text and "| 2 |" in text
    assert "| bogus | error: " in text and "*Not run yet: `bash deploy/gpu-device.sh tests`" in text
    assert (tmp_path / "docs" / "gpu-results" / "sweep.png").exists()
