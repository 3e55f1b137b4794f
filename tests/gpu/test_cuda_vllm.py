"""Real CUDA vLLM engines under the daemon (issue 12, item 1 (a)-(e)). Tests run in file order
on one daemon (conftest.py): (a) two engines share the GPU, (e) monitor during a bench, (c) the
KV cache follows gpu_memory_utilization, (b) SIGKILL and the memory-release wait, (d) SIGTERM.

    MIG_ORCH_CUDA_VENV=/opt/mig-orchestrator/vllm-venv python -m pytest -m gpu tests/gpu -v
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.bench.compare import ThreadedControl, restart_and_wait
from orchestrator.gpu.nvml import Nvml
from orchestrator.practicum import startup_phases as vllm_startup
from orchestrator.practicum.record import watch_until_ready
from orchestrator.practicum.session import MODELS, REPO, Session, gpu_memory_used_mib
from tests.gpu_support import REHEARSAL

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

GIB = 1024**3
ENGINE_CORE = "VLLM::EngineCore"


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _base(session: Session, name: str) -> str:
    return f"http://127.0.0.1:{session.ports[name]}"


def _launch_stamps(log: str, pattern: str) -> list[float | None]:
    """Per launch in an engine log: time of the first vLLM line matching pattern ('' = any)."""
    out = []
    for lines in vllm_startup.launches(log.splitlines()):
        hit = [ln for ln in lines if pattern in ln and vllm_startup.parse([ln]).first_log]
        out.append(vllm_startup.parse(hit[:1]).first_log if hit else None)
    return out


def _children(pid: int) -> dict[int, str]:
    kids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == pid:
            kids[int(entry.name)] = cmdline
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_two_models_share_the_gpu_start_in_turn_and_serve(session: Session) -> None:
    with session.client() as control:
        status = {name: control.model(name) for name in MODELS}
    assert {s["state"] for s in status.values()} == {"ready"}
    slices = {s["slice"]["uuid"] for s in status.values()}
    assert len(slices) == 1, f"the two models are on {slices}, not one shared GPU"
    (uuid,) = slices
    assert uuid.startswith("GPU-")  # a whole GPU, not a MIG slice
    # In turn: chat's first launch logged nothing before coder's first launch served.
    coder_served = _launch_stamps(session.engine_log("coder"), "Starting vLLM")[0]
    chat_began = _launch_stamps(session.engine_log("chat"), "")[0]
    assert coder_served is not None and chat_began is not None
    assert chat_began >= coder_served - 1, "chat started before coder was serving"
    for name in MODELS:
        base = _base(session, name)
        done = httpx.post(
            f"{base}/v1/completions",
            json={"model": name, "prompt": "def fibonacci(n):", "max_tokens": 16},
            timeout=60,
        )
        assert done.status_code == 200, done.text
        assert done.json()["usage"]["completion_tokens"] > 0
        chat = httpx.post(
            f"{base}/v1/chat/completions",
            json={
                "model": name,
                "messages": [{"role": "user", "content": "Explain a KV cache."}],
                "max_tokens": 16,
            },
            timeout=60,
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["role"] == "assistant"


def test_e_monitor_reads_sm_and_memory_utilisation_while_a_bench_runs(session: Session) -> None:
    monitor = [sys.executable, "-m", "orchestrator", "monitor", "--interval", "0.5", "--json"]
    if session.topology:
        monitor += ["--topology", session.topology]
    watcher = subprocess.Popen(monitor, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        bench = _cli(
            "bench",
            "--url",
            session.url,
            "--model",
            "coder",
            "--workload",
            "random",
            "--input-len",
            "512",
            "--max-tokens",
            "128",
            "--concurrency",
            "64",
            "--duration",
            "8",
            "--json",
            "-",
            "-q",
        )
    finally:
        watcher.send_signal(signal.SIGINT)
        out, _ = watcher.communicate(timeout=20)
    assert bench.returncode == 0, bench.stderr
    level = json.loads(bench.stdout)["levels"][0]
    assert level["completed"] > 0 and level["failed"] == 0
    samples = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(samples) >= 10
    gpu = [s for s in samples if s.get("uuid", "").startswith("GPU-")]
    assert gpu, samples[:2]
    if REHEARSAL:
        return  # the simulated GPU's utilisation is a constant
    busiest = max(s["sm_util_pct"] for s in gpu)
    assert busiest > 5, f"monitor saw at most {busiest}% SM utilisation during the bench"
    assert max(s["mem_util_pct"] for s in gpu) > 0
    used = max(s["memory_used_bytes"] for s in gpu) / max(s["memory_total_bytes"] for s in gpu)
    assert used > 0.7, f"two engines at 0.40 each, but the GPU shows {used:.0%} in use"


def _latest(session: Session, name: str) -> dict[str, float]:
    return vllm_startup.latest(session.engine_log(name)).figures


def test_c_kv_cache_follows_gpu_memory_utilization(session: Session) -> None:
    with session.client() as control:
        before_status = control.model("chat")
    before = _latest(session, "chat")
    high = float(before_status["settings"]["gpu_memory_utilization"])
    low = round(high * 0.6, 2)
    with session.client() as control:
        asyncio.run(
            restart_and_wait(ThreadedControl(control), "chat", {"gpu_memory_utilization": low}, 900)
        )
    after = _latest(session, "chat")
    print(f"\nKV cache at {high}: {before}\nKV cache at {low}: {after}")
    assert before.get("kv_cache_tokens") and after.get("kv_cache_tokens")
    if REHEARSAL:
        return  # the CPU build sizes its KV cache from VLLM_CPU_KVCACHE_SPACE instead
    with Nvml.open(None) as nvml:
        total = nvml.slice_memory(before_status["slice"]["uuid"])[1] / GIB
    # Everything but the KV cache (weights, activations, graphs) stays; the KV cache takes the
    # rest of the budget: predict the low one from the high one.
    other = high * total - before["kv_cache_gib"]
    expected = low * total - other
    assert after["kv_cache_gib"] == pytest.approx(expected, rel=0.10)
    tokens_ratio = after["kv_cache_tokens"] / before["kv_cache_tokens"]
    assert tokens_ratio == pytest.approx(after["kv_cache_gib"] / before["kv_cache_gib"], rel=0.03)
    assert after["max_concurrency"] < before["max_concurrency"]


def _engine_core(api_pid: int) -> int:
    cores = [pid for pid, cmd in _children(api_pid).items() if cmd.startswith(ENGINE_CORE)]
    assert len(cores) == 1, f"API server {api_pid} has children {_children(api_pid)}"
    return cores[0]


def test_b_sigkill_reaps_the_engine_core_waits_for_its_memory_and_serves_again(
    session: Session,
) -> None:
    with session.client() as control:
        before = control.model("chat")
    api = before["pid"]
    core = _engine_core(api)
    uuid = before["slice"]["uuid"]
    if not REHEARSAL:
        with Nvml.open(None) as nvml:
            holders = nvml.slice_pids(uuid)
        assert holders is not None and core in holders, (
            f"NVML lists {holders} on {uuid}, not the EngineCore {core}"
        )
    log_mark = len(session.engine_log("chat").splitlines())
    killed = time.time()
    os.kill(api, signal.SIGKILL)
    with session.client() as control:
        seen = watch_until_ready(control, "chat", api, 900, since=killed)
    print(f"\nSIGKILL -> ready: {seen['ready_s']:.1f} s ({seen})")
    assert not _alive(core), f"the EngineCore {core} outlived its API server"
    new = session.engine_log("chat").splitlines()[log_mark:]
    notes = [ln for ln in new if ln.startswith("[mig-orchestrator]")]
    print("\n".join(notes))
    cleanup = next(i for i, ln in enumerate(notes) if "engine tree gone" in ln)
    # a plain launch or, with a standby, its trigger
    start = next(i for i, ln in enumerate(notes) if vllm_startup.start_argv(ln) is not None)
    assert cleanup < start
    if not REHEARSAL:
        released = [
            i for i, ln in enumerate(notes) if "previous engine's GPU memory released" in ln
        ]
        assert released and cleanup < released[0] < start, notes
        assert str(core) in notes[released[0]]
    done = httpx.post(
        f"{_base(session, 'chat')}/v1/completions",
        json={"model": "chat", "prompt": "Hello", "max_tokens": 8},
        timeout=60,
    )
    assert done.status_code == 200, done.text


def test_d_daemon_sigterm_leaves_no_engine_and_gives_the_memory_back(session: Session) -> None:
    with session.client() as control:
        pids = [m["pid"] for m in control.models() if m["pid"]]
    trees = {pid: [pid, *_children(pid)] for pid in pids}
    result: dict[str, Any] = session.stop(timeout=120)
    print(f"\n{result}")
    assert result["exited"] and result["exit_s"] < 60
    assert result["exit_code"] in (0, None)  # None: an adopted daemon is not our child
    assert result["left_running"] == []
    assert not [p for tree in trees.values() for p in tree if _alive(p)]
    if REHEARSAL:
        return
    # The driver frees a dead process's memory asynchronously: allow it a few seconds.
    deadline = time.monotonic() + 20
    after = result["gpu_memory_after_mib"]
    while after > result["gpu_memory_idle_mib"] + 256 and time.monotonic() < deadline:
        time.sleep(0.5)
        after = gpu_memory_used_mib() or after
    assert after <= result["gpu_memory_idle_mib"] + 256, (
        f"GPU memory {after:.0f} MiB after the daemon stopped, idle was "
        f"{result['gpu_memory_idle_mib']:.0f} MiB"
    )
