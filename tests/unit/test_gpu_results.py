"""docs/gpu-results.md from a results folder: tables, the commands behind them, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.practicum import results_render as gpu_results


def _write(root: Path, name: str, data: object) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _level(c: int, tok_s: float, ttft: float) -> dict[str, object]:
    dist = {
        "count": 9,
        "mean": ttft,
        "min": ttft,
        "max": ttft,
        "p50": ttft,
        "p90": ttft,
        "p99": ttft,
    }
    return {
        "concurrency": c,
        "duration_s": 8,
        "completed": 100,
        "failed": 0,
        "input_tokens": 1,
        "input_tokens_estimated": False,
        "output_tokens": 1,
        "request_throughput": tok_s / 128,
        "output_throughput": tok_s,
        "total_token_throughput": tok_s,
        "ttft_ms": dist,
        "tpot_ms": dist,
        "itl_ms": dist,
        "e2e_s": dist,
    }


def test_a_partial_session_renders_what_ran_and_names_the_step_for_the_rest(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    command = "python -m orchestrator bench --model coder --concurrency 1,256"
    _write(
        results,
        "commands.jsonl",
        json.dumps(
            {
                "phase": "serve",
                "label": "sweep",
                "argv": command.split(),
                "command": command,
                "seconds": 91.0,
                "exit_code": 0,
                "outputs": [],
            }
        )
        + "\n",
    )
    _write(results, "serve/sweep.json", {"levels": [_level(1, 395, 25), _level(256, 9785, 575)]})
    _write(
        results,
        "serve/bench-vs-vllm.json",
        {
            "mig-orchestrator bench #1": {"output_throughput": 6400, "p50_ttft_ms": 127},
            "vllm bench serve #1": {"output_throughput": 6500, "p50_ttft_ms": 150},
        },
    )
    _write(
        results,
        "restarts/restarts.json",
        [
            {"variant": "vllm-direct", "repeat": 1, "launch_to_ready_s": 70.0},
            {
                "variant": "standby+fork",
                "repeat": 1,
                "crash_to_detected_s": 0.1,
                "crash_to_relaunch_s": 5.0,
                "crash_to_ready_s": 22.0,
                "crash_to_serving_s": 23.1,
            },
        ],
    )
    text = gpu_results.render(results, tmp_path / "docs" / "gpu-results.md")
    assert f"```\n{command}\n```" in text  # the exact command above its table
    assert "| 256 | 100 | 0 | 76.45 | 9785.0 | 9785.0 | 575.0/575.0/575.0 |" in text
    assert "output tokens/s: ours 6,400.0, vllm bench 6,500.0: -1.5% (within ±5%)" in text
    assert "TTFT p50: ours 127.0, vllm bench 150.0: -15.3% (OUTSIDE ±5%)" in text
    assert "| standby+fork | crash #1 | 0.10 | 5.0 | 22.0 | 23.1 | 0.33 ✓ |" in text
    assert "*Not run yet: `bash deploy/gpu-device.sh compare` measures it.*" in text
    assert "*Not run yet: `bash deploy/gpu-device.sh tests` measures it.*" in text


def test_gpu_test_outcomes_come_from_the_junit_file(tmp_path: Path) -> None:
    junit = """<testsuites><testsuite name="pytest">
      <testcase classname="tests.gpu.test_cuda_vllm" name="test_a" time="3.2"/>
      <testcase classname="tests.gpu.test_cuda_vllm" name="test_b" time="80.1">
        <failure message="assert 'released' in notes">...</failure></testcase>
    </testsuite></testsuites>"""
    _write(tmp_path / "r", "gpu-tests.xml", junit)
    text = gpu_results.render(tmp_path / "r", tmp_path / "out.md")
    assert "| `test_a` | 3.2 | passed |" in text
    assert "| `test_b` | 80.1 | failure: assert 'released' in notes |" in text
