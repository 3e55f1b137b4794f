# ruff: noqa: E501 (real vLLM log lines are long)
"""Start-up phases read from an engine log as the daemon keeps it, in vLLM 0.26's formats."""

from __future__ import annotations

import time

from orchestrator.practicum import startup_phases as vllm_startup

# A CUDA engine's log (messages as vLLM 0.26.0 formats them), restarted once by the daemon.
LOG = """\
[mig-orchestrator] starting: /v/bin/python -m vllm.entrypoints.openai.api_server --port 1 --gpu-memory-utilization 0.4
(APIServer pid=10) INFO 12-02 10:00:30 [api_utils.py:286] non-default args: {}
(EngineCore_DP0 pid=11) INFO 12-02 10:01:00 [core.py:117] Initializing a V1 LLM engine (v0.26.0) with config: ...
(EngineCore_DP0 pid=11) INFO 12-02 10:01:01 [flash_attn.py:777] Using FlashAttention version 3
(EngineCore_DP0 pid=11) INFO 12-02 10:01:02 [default_loader.py:431] Loading weights took 3.10 seconds
(EngineCore_DP0 pid=11) INFO 12-02 10:01:03 [gpu_model_runner.py:5348] Model loading took 1.54 GiB memory and 3.812345 seconds
(EngineCore_DP0 pid=11) INFO 12-02 10:01:10 [backends.py:394] Compiling a graph for compile range (1, 8192) takes 12.50 s
(EngineCore_DP0 pid=11) INFO 12-02 10:01:22 [monitor.py:20] torch.compile took 19.10 s in total
(EngineCore_DP0 pid=11) INFO 12-02 10:01:23 [gpu_worker.py:561] Available KV cache memory: 53.71 GiB
(EngineCore_DP0 pid=11) INFO 12-02 10:01:23 [kv_cache_utils.py:2177] GPU KV cache size: 440,016 tokens
(EngineCore_DP0 pid=11) INFO 12-02 10:01:23 [kv_cache_utils.py:2179] Maximum concurrency for 4,096 tokens per request: 107.43x
(EngineCore_DP0 pid=11) INFO 12-02 10:01:27 [gpu_model_runner.py:6845] Graph capturing finished in 4 secs, took 0.53 GiB
(EngineCore_DP0 pid=11) INFO 12-02 10:03:44 [core.py:348] init engine (profile, create kv cache, warmup model) took 161.20 s (compilation: 19.10 s)
(APIServer pid=10) INFO 12-02 10:03:47 [api_server.py:677] Starting vLLM server on http://127.0.0.1:1
INFO:     Application startup complete.
[mig-orchestrator] cleaning up after the engine: engine tree gone in 4.80s
[mig-orchestrator] starting: /v/bin/python -m vllm.entrypoints.openai.api_server --port 1 --gpu-memory-utilization 0.25
(APIServer pid=20) INFO 12-02 10:05:00 [api_utils.py:286] non-default args: {}
(EngineCore_DP0 pid=21) INFO 12-02 10:05:28 [core.py:117] Initializing a V1 LLM engine (v0.26.0) with config: ...
(EngineCore_DP0 pid=21) INFO 12-02 10:05:31 [backends.py:293] Directly load the compiled graph(s) for compile range (1, 8192) from the cache, took 1.2 s
(EngineCore_DP0 pid=21) INFO 12-02 10:05:33 [monitor.py:20] torch.compile took 3.60 s in total
(EngineCore_DP0 pid=21) INFO 12-02 10:05:34 [gpu_worker.py:561] Available KV cache memory: 32.40 GiB
(EngineCore_DP0 pid=21) INFO 12-02 10:05:34 [kv_cache_utils.py:2177] GPU KV cache size: 265,420 tokens
(EngineCore_DP0 pid=21) INFO 12-02 10:05:37 [gpu_model_runner.py:6845] Graph capturing finished in 3 secs, took 0.53 GiB
"""


def _at(hms: str) -> float:
    return time.mktime(time.strptime(f"2026-12-02 {hms}", "%Y-%m-%d %H:%M:%S"))


def test_the_log_is_cut_at_each_daemon_launch() -> None:
    runs = vllm_startup.launches(LOG.splitlines())
    assert len(runs) == 2
    assert runs[0][0].startswith("(APIServer pid=10)")
    assert runs[1][0].startswith("(APIServer pid=20)")


def test_a_cold_start_is_broken_into_its_phases() -> None:
    first = vllm_startup.launches(LOG.splitlines())[0]
    s = vllm_startup.parse(first, launched=_at("10:00:05"), ready=_at("10:03:48"), year=2026)
    assert s.figures == {
        "weights_s": 3.812345,  # the runner's figure wins over the loader's
        "weights_gib": 1.54,
        "compile_s": 19.1,
        "kv_cache_gib": 53.71,
        "kv_cache_tokens": 440016,
        "max_concurrency": 107.43,
        "graphs_s": 4,
        "graphs_gib": 0.53,
        "init_engine_s": 161.2,
    }
    assert s.compile_cache == "miss" and s.attention == "FlashAttention version 3"
    assert s.phases() == {
        "imports_api_server_s": 25.0,
        "until_engine_core_s": 30.0,
        "weights_s": 3.812345,
        "compile_s": 19.1,
        "graphs_s": 4,
        "after_graphs_until_ready_s": 141.0,
        "init_engine_s": 161.2,
        "total_s": 223.0,
    }


def test_the_latest_launch_is_the_warm_restart() -> None:
    s = vllm_startup.latest(LOG, year=2026)
    assert s.compile_cache == "hit"
    assert s.figures["kv_cache_tokens"] == 265420 and s.figures["compile_s"] == 3.6
    # no launch or ready time given, and the log shows no ready line: those phases are unknown
    assert s.phases()["total_s"] is None and s.phases()["until_engine_core_s"] == 28.0


def test_launch_notes_from_a_standby_or_with_fork_cut_the_log_too() -> None:
    argv = "/v/bin/python -m vllm.entrypoints.openai.api_server --port 1"
    notes = [
        f"[mig-orchestrator] starting: {argv}",
        f"[mig-orchestrator] starting (EngineCore by fork): {argv}",
        f"[mig-orchestrator] starting from standby pid 7 (imports done): {argv}",
        f"[mig-orchestrator] starting from standby pid 7 (still importing) (EngineCore by fork): {argv}",
    ]
    assert [vllm_startup.start_argv(n) for n in notes] == [argv.split()] * 4
    assert vllm_startup.start_argv("[mig-orchestrator] starting anyway: pids [1]") is None
    assert len(vllm_startup.launches([*notes, "(APIServer pid=1) INFO x"])) == 4


def test_the_daemons_ready_note_gives_the_launch_of_a_standby() -> None:
    # The standby's process started minutes earlier; the launch is its trigger, 16.85 s before.
    run = [
        "(APIServer pid=20) INFO 12-02 10:05:01 [api_utils.py:286] non-default args: {}",
        "(EngineCore_DP0 pid=21) INFO 12-02 10:05:03 [core.py:117] Initializing a V1 LLM engine",
        "[mig-orchestrator] ready 16.85 s after the standby's trigger (EngineCore by fork), "
        "18.62 s after the failure",
    ]
    s = vllm_startup.parse(run, launched=_at("09:58:00"), ready=_at("10:05:17"), year=2026)
    assert s.via == "standby" and s.launched == _at("10:05:17") - 16.85
    assert abs(s.phases()["total_s"] - 16.85) < 0.06  # rounded to a tenth
    assert abs(s.phases()["imports_api_server_s"] - 0.85) < 0.06
