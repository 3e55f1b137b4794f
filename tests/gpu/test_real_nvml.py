"""Discovery and telemetry on a real NVIDIA driver; read-only (never changes MIG or resets).

Run on a GPU host: PYTHONPATH=. python3 -m pytest -m gpu tests/gpu -s -q
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pprint import pformat

import pytest

from orchestrator.gpu.nvml import Nvml, NvmlUnavailable
from orchestrator.units import GIB

pytestmark = pytest.mark.gpu

GPU_UUID = re.compile(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# R470+ MIG UUIDs, or the older MIG-GPU-<uuid>/<gi>/<ci> form.
MIG_UUID = re.compile(
    r"MIG-(?:[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|GPU-[0-9a-f-]{36}/\d+/\d+)"
)
PROFILE = re.compile(r"(?:\d+c\.)?\d+g\.\d+gb(?:[+-][a-z.]+)?")


@pytest.fixture(scope="module")
def nvml() -> Iterator[Nvml]:
    try:
        session = Nvml.open(None)
    except NvmlUnavailable as e:
        pytest.skip(f"no NVIDIA driver here: {e}")
    with session:
        yield session


def test_inventory_matches_the_hardware(nvml: Nvml) -> None:
    inv = nvml.inventory()
    print("\n" + pformat(inv, width=100))
    assert inv.source == "nvml" and inv.gpus
    for gpu in inv.gpus:
        assert GPU_UUID.fullmatch(gpu.uuid), gpu.uuid
        assert gpu.name.startswith("NVIDIA "), gpu.name
        assert 1 * GIB < gpu.memory_total_bytes < 1024 * GIB
        assert 0 <= gpu.memory_used_bytes <= gpu.memory_total_bytes
        if not gpu.mig_enabled:
            (whole,) = gpu.slices
            assert (whole.uuid, whole.profile, whole.gi_id) == (gpu.uuid, None, None)
            assert whole.memory_total_bytes == gpu.memory_total_bytes
        for s in gpu.slices if gpu.mig_enabled else ():
            assert MIG_UUID.fullmatch(s.uuid), s.uuid
            assert s.profile is not None and PROFILE.fullmatch(s.profile), s.profile
            assert s.gi_id is not None and s.ci_id is not None
    for s in inv.slices:
        used, total = nvml.slice_memory(s.uuid)
        assert total == s.memory_total_bytes and 0 <= used <= total


def test_sample_values_are_plausible(nvml: Nvml) -> None:
    samples = nvml.sample()
    print("\n" + pformat(samples, width=100))
    assert [s.uuid for s in samples] == [g.uuid for g in nvml.inventory().gpus]
    for s in samples:
        if s.mig_enabled:
            assert s.sm_util_pct is None and s.mem_util_pct is None
        else:
            assert s.sm_util_pct is not None and 0 <= s.sm_util_pct <= 100
            assert s.mem_util_pct is not None and 0 <= s.mem_util_pct <= 100
        assert s.power_w is None or 5 < s.power_w < 1500
        assert s.temperature_c is None or 5 < s.temperature_c < 110
        assert s.sm_clock_mhz is None or 0 < s.sm_clock_mhz < 5000
        assert s.mem_clock_mhz is None or 0 < s.mem_clock_mhz < 20000
        assert 0 <= s.memory_used_bytes <= s.memory_total_bytes
        assert s.slices and all(sl.memory_used_bytes <= sl.memory_total_bytes for sl in s.slices)


def test_computed_profile_names_match_the_drivers(nvml: Nvml) -> None:
    """Where the driver names its GPU-instance profiles, our go-nvlib-style names agree."""
    named = []
    for gpu in nvml.inventory().gpus:
        offered = nvml.mig_profiles(gpu.index)
        print(f"\nGPU {gpu.index} MIG profiles:\n" + pformat(offered, width=100))
        named += [(p.name, p.driver_name) for p in offered if p.driver_name is not None]
    if not named:
        pytest.skip("the driver names no MIG profiles on these GPUs")
    assert [ours for ours, _ in named] == [theirs for _, theirs in named]
