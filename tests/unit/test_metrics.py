"""The control plane's /metrics pieces that need no daemon: GPU series and engine pages."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from orchestrator import prom_text
from orchestrator.gpu.nvml import GpuSample, SliceSample
from orchestrator.http.metrics import engine_series, gpu_families

MIG_ON = GpuSample(
    index=0,
    uuid="GPU-a",
    name="NVIDIA A100-SXM4-80GB",
    mig_enabled=True,
    sm_util_pct=None,
    mem_util_pct=None,
    power_w=64.5,
    temperature_c=31,
    sm_clock_mhz=1410,
    mem_clock_mhz=None,
    memory_used_bytes=7,
    memory_total_bytes=80,
    slices=(
        SliceSample("MIG-1", "3g.40gb", 2, 0, 5, 40),
        SliceSample("MIG-2", "1g.10gb", 9, 0, 0, 10),
    ),
)
MIG_OFF = GpuSample(1, "GPU-b", "NVIDIA H100", False, 12, 3, None, None, None, None, 0, 80, ())
WHOLE = SliceSample("GPU-b", None, None, None, 2, 80)


def test_gpu_series_come_from_the_reported_fields_only() -> None:
    off = dataclasses.replace(MIG_OFF, slices=(WHOLE,))
    expo = prom_text.parse(prom_text.render(gpu_families([MIG_ON, off], {"MIG-1": ["a", "b"]})))
    gpu0 = {"gpu": "0", "uuid": "GPU-a", "name": "NVIDIA A100-SXM4-80GB"}
    assert expo.total("mig_orchestrator_gpu_power_w", gpu0) == 64.5
    assert expo.total("mig_orchestrator_gpu_sm_clock_mhz", gpu0) == 1410
    # Not reported (None) means no series, never a 0: MIG has no utilisation.
    assert expo.find("mig_orchestrator_gpu_sm_util_pct", {"gpu": "0"}) == []
    assert expo.total("mig_orchestrator_gpu_sm_util_pct", {"gpu": "1"}) == 12
    assert expo.find("mig_orchestrator_gpu_mem_clock_mhz") == []
    assert expo.find("mig_orchestrator_gpu_mig_enabled") == []
    assert {s.name for s in expo.samples()} == {
        "mig_orchestrator_gpu_sm_util_pct",
        "mig_orchestrator_gpu_mem_util_pct",
        "mig_orchestrator_gpu_power_w",
        "mig_orchestrator_gpu_temperature_c",
        "mig_orchestrator_gpu_sm_clock_mhz",
        "mig_orchestrator_gpu_memory_used_bytes",
        "mig_orchestrator_gpu_memory_total_bytes",
        "mig_orchestrator_slice_memory_used_bytes",
        "mig_orchestrator_slice_memory_total_bytes",
    }
    used = {
        (s.labels["slice"], s.labels["profile"], s.labels["model"]): s.value
        for s in expo.find("mig_orchestrator_slice_memory_used_bytes")
    }
    assert used == {
        ("MIG-1", "3g.40gb", "a,b"): 5,
        ("MIG-2", "1g.10gb", ""): 0,
        ("GPU-b", "whole", ""): 2,
    }
    assert all(f.type == "gauge" and f.help for f in expo.families.values())


def test_an_engine_without_a_good_page_has_no_series(caplog: pytest.LogCaptureFixture) -> None:
    assert engine_series("alice", {"model": "alice"}, None) is None
    with caplog.at_level(logging.WARNING):
        assert engine_series("alice", {"model": "alice"}, "vllm:num_requests_running two\n") is None
    assert "alice: its /metrics page is not Prometheus text" in caplog.text
    good = engine_series("alice", {"model": "alice"}, "vllm:num_requests_running 2\n")
    assert good is not None
    assert good["vllm:num_requests_running"].samples == [
        'vllm:num_requests_running{model="alice"} 2'
    ]
