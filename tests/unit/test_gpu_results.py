"""The report of a partial results folder, and dev/gpu's page of our GPU runs built on it."""

from __future__ import annotations

import json
from pathlib import Path

from dev.gpu import render_results
from orchestrator.practicum import report


def _write(root: Path, name: str, data: object) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _level(c: int, tok_s: float, ttft: float) -> dict[str, object]:
    dist = {"count": 9, "mean": ttft, "min": ttft, "max": ttft, "p50": ttft, "p90": ttft}
    return {
        "concurrency": c,
        "completed": 100,
        "failed": 0,
        "request_throughput": tok_s / 128,
        "output_throughput": tok_s,
        "ttft_ms": {**dist, "p99": ttft},
        "itl_ms": {**dist, "p99": ttft},
    }


def _command(phase: str, label: str, code: int, error: str | None = None) -> str:
    record = {
        "phase": phase,
        "label": label,
        "argv": ["mig-orchestrator", label],
        "command": f"python -m orchestrator bench --model coder --concurrency 1,256 # {label}",
        "seconds": 91.0,
        "exit_code": code,
        "outputs": [],
    }
    return json.dumps(record | ({"error": error} if error else {})) + "\n"


def _partial(results: Path) -> None:
    _write(
        results,
        "run.json",
        {"device": "NVIDIA H200", "gpus": ["NVIDIA H200"], "input_len": 512, "output_len": 128},
    )
    _write(
        results,
        "commands.jsonl",
        _command("serve", "sweep", 0) + _command("serve", "bench-vs-vllm", 1, "Traceback: boom"),
    )
    _write(results, "serve/sweep.json", {"levels": [_level(1, 395, 25), _level(256, 9785, 575)]})
    _write(
        results,
        "restarts/restarts.json",
        [
            {
                "variant": "plain",
                "settings": {"standby": False},
                "plain": True,
                "repeat": 1,
                "crash_to_detected_s": 0.1,
                "crash_to_relaunch_s": 5.0,
                "crash_to_ready_s": 54.0,
                "crash_to_serving_s": 55.0,
            },
            {
                "variant": "standby+fork",
                "settings": {"standby": True, "engine_fork": True},
                "plain": False,
                "repeat": 1,
                "crash_to_detected_s": 0.1,
                "crash_to_relaunch_s": 5.0,
                "crash_to_ready_s": 18.0,
                "crash_to_serving_s": 18.7,
            },
        ],
    )


def test_a_partial_run_reports_what_ran_what_failed_and_what_did_not_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _partial(results)
    text = report.render(results, results / "report.md")
    assert text.startswith("# vLLM practicum through mig-orchestrator: NVIDIA H200\n")
    assert "random prompts of 512 tokens, 128 output tokens" in text
    assert "Simulated" not in text and "CPU rehearsal" not in text
    assert "| 256 | 76.45 | 9,785 | 575 | 575 |" in text
    assert "**1 step(s) FAILED**: serve/bench-vs-vllm" in text and "Traceback: boom" in text
    assert "| standby+fork | crash #1 | 0.10 | 5.0 | 18.0 | 18.7 | 0.34 |" in text
    assert "| plain | crash #1 | 0.10 | 5.0 | 54.0 | 55.0 | 1.00 |" in text
    assert "*Not run: `mig-orchestrator practicum compare` measures it.*" in text
    assert text.count("*How to read it:*") == 2  # the two tables with data


def test_the_lab_page_adds_the_gpu_tests_from_their_junit_file(tmp_path: Path) -> None:
    junit = """<testsuites><testsuite name="pytest">
      <testcase classname="tests.gpu.test_cuda_vllm" name="test_a" time="3.2"/>
      <testcase classname="tests.gpu.test_cuda_vllm" name="test_b" time="80.1">
        <failure message="assert 'released' in notes">...</failure></testcase>
    </testsuite></testsuites>"""
    _partial(tmp_path / "r")
    _write(tmp_path / "r", "gpu-tests.xml", junit)
    text = render_results.render(tmp_path / "r", tmp_path / "out.md")
    assert "| `test_a` | 3.2 | passed |" in text
    assert "| `test_b` | 80.1 | failure: assert 'released' in notes |" in text
    assert "## Concurrency sweep" in text
