"""Once an engine is ready: is the device vLLM sized its memory from really the engine's slice?

vLLM 0.26 to 0.33 log, from the worker, once memory profiling has run (v1/worker/gpu_worker.py,
compile_or_warm_up_model):
    Free memory on device (38.91/39.25 GiB) on startup. Desired GPU memory utilization is ...
where the total is CUDA's (torch.cuda.mem_get_info), which on a MIG slice is the slice's. The
start-up memory check that fails prints the same figures ("Free memory on device cuda:0 (X/Y GiB)
on startup is less than ...", v1/worker/utils.py). CPU engines, `--kv-cache-memory` and a reused
start-up plan (VLLM_ENABLE_STARTUP_PLAN=1) skip profiling: then there is nothing to check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from orchestrator.gpu.inventory import Slice
from orchestrator.units import GIB

_DEVICE_MEMORY = re.compile(
    r"Free memory on device (?:\S+ )?\((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\) on startup"
)
# CUDA leaves a little of a device's memory out of its total (on an H200, 139.8 of NVML's 140.4
# GiB), and vLLM rounds to 0.01 GiB. Slices of different sizes differ by far more.
TOLERANCE = 0.05


def reported_total_gib(lines: Iterable[str]) -> float | None:
    """The device total vLLM last logged at start-up, in GiB; None when it logged none."""
    total = None
    for line in lines:
        found = _DEVICE_MEMORY.search(line)
        if found:
            total = float(found.group("total"))
    return total


def verify(slc: Slice | None, lines: Iterable[str], note: Callable[[str], None]) -> str | None:
    """Compare vLLM's device total in `lines` with the slice's NVML memory; say what was found
    through `note`. Returns the reason the engine must fail, or None."""
    if slc is None:
        return None
    expected = slc.memory_total_bytes / GIB
    seen = reported_total_gib(lines)
    if seen is None:
        note(
            "device check: vLLM logged no 'Free memory on device' line (CPU engine, "
            "--kv-cache-memory or a reused start-up plan), so its device is not verified"
        )
        return None
    if abs(seen - expected) <= TOLERANCE * expected:
        note(
            f"device check: vLLM sees {seen:.2f} GiB on its device; NVML gives its slice "
            f"{_where(slc)} {expected:.2f} GiB"
        )
        return None
    reason = (
        f"device check failed: vLLM sees {seen:.2f} GiB on its device, but its slice "
        f"{_where(slc)} ({slc.uuid}) has {expected:.2f} GiB according to NVML; "
        "the engine is not running on the slice it was given"
    )
    note(reason)
    return reason


def _where(slc: Slice) -> str:
    """`GPU0 3g.40gb (gi 1)` or `GPU1 whole`, as the engine log names a slice."""
    if slc.profile is None:
        return f"GPU{slc.gpu_index} whole"
    return f"GPU{slc.gpu_index} {slc.profile} (gi {slc.gi_id})"
