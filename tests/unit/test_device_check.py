"""After ready, the device total vLLM logged must be the slice's memory as NVML gives it."""

from __future__ import annotations

import pytest

from orchestrator.engine.device_check import reported_total_gib, verify
from orchestrator.gpu.inventory import Slice

SLICE = Slice(
    uuid="MIG-31b2252a-f41b-47f9-8b11-f2fca23e49d2",
    gpu_index=0,
    gpu_uuid="GPU-d48c3df3-cb9f-46ad-98d6-6f55c08484b5",
    gpu_name="NVIDIA A100-SXM4-80GB",
    profile="3g.40gb",
    memory_total_bytes=40192 * 1024**2,  # 39.25 GiB
    gi_id=2,
    ci_id=0,
)
# vLLM 0.33's line, as an EngineCore prints it.
LINE = (
    "(EngineCore_DP0 pid=4242) INFO 12-02 13:40:01 [gpu_worker.py:1058] Free memory on device "
    "({free}/{total} GiB) on startup. Desired GPU memory utilization is (0.9, 35.33 GiB). "
    "Actual usage is 1.2 GiB for consumed memory (weights + non-torch), ..."
)


def check(*lines: str) -> tuple[str | None, list[str]]:
    notes: list[str] = []
    return verify(SLICE, lines, notes.append), notes


def test_the_slices_memory_passes_and_says_so() -> None:
    wrong, notes = check("INFO loading", LINE.format(free=38.9, total=39.38))
    assert wrong is None
    assert notes == [
        "device check: vLLM sees 39.38 GiB on its device; NVML gives its slice "
        "GPU0 3g.40gb (gi 2) 39.25 GiB"
    ]


@pytest.mark.parametrize("total", [80.0, 19.5])
def test_another_devices_memory_fails_naming_both_figures(total: float) -> None:
    wrong, notes = check(LINE.format(free=total - 1, total=total))
    assert wrong is not None
    assert f"vLLM sees {total:.2f} GiB on its device" in wrong
    assert f"GPU0 3g.40gb (gi 2) ({SLICE.uuid}) has 39.25 GiB according to NVML" in wrong
    assert notes == [wrong]


def test_the_failed_memory_check_line_counts_too() -> None:
    # vLLM's request_memory error names the device (v1/worker/utils.py).
    line = "ValueError: Free memory on device cuda:0 (1.5/79.19 GiB) on startup is less than ..."
    assert reported_total_gib([line]) == 79.19


def test_no_line_is_no_verdict() -> None:
    wrong, notes = check("INFO Auto set (1.0/23.4) GiB for KV cache on node 0")
    assert wrong is None
    assert notes[0].startswith("device check: vLLM logged no 'Free memory on device' line")


def test_no_slice_is_not_checked() -> None:
    notes: list[str] = []
    assert verify(None, [LINE.format(free=1, total=80)], notes.append) is None
    assert notes == []


def test_the_last_line_wins() -> None:
    lines = [LINE.format(free=1, total=80), LINE.format(free=1, total=39.3)]
    assert reported_total_gib(lines) == 39.3
