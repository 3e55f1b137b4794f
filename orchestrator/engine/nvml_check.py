"""`mig-orchestrator nvml-check`: run the MIG NVML fix's lookups against the driver and show them.

For each slice (or each UUID given): what NVML says the device is, where vLLM's own lookup
(UUID -> nvmlDeviceGetIndex -> nvmlDeviceGetHandleByIndex) ends, and where it ends with the
fix's NVML in between. Runs the same code the engine runs, in the daemon's venv; no vLLM needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from typing import Any

from orchestrator.gpu.nvml import Nvml
from orchestrator.inengine.nvml_shim import mig_orchestrator_nvml_shim as shim


def lookups(nvml: Any, uuid: str) -> dict[str, Any]:
    """The fix's NVML lookups for `uuid`; the caller holds nvmlInit."""
    handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
    device = shim.View(
        nvml.nvmlDeviceGetName(handle), int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    )
    try:
        capability: list[int] | str = list(nvml.nvmlDeviceGetCudaComputeCapability(handle))
    except nvml.NVMLError as e:
        capability = f"{type(e).__name__}: {e}"
    mig = shim.find_mig_device(nvml, uuid)
    index, alone = shim.index_lookup(nvml, uuid)
    result: dict[str, Any] = {
        "uuid": uuid,
        "device": dataclasses.asdict(device),
        "capability": capability,
        "mig": None if mig is None else dataclasses.asdict(mig),
        "vllm_alone": {"index": index, **dataclasses.asdict(alone), "right": alone == device},
        "with_fix": None,
    }
    if mig is not None:
        index, fixed = shim.index_lookup(shim.SliceNvml(nvml, mig), uuid)
        result["with_fix"] = {"index": index, **dataclasses.asdict(fixed), "right": fixed == device}
    return result


def _route(step: dict[str, Any]) -> str:
    view = shim.View(step["name"], step["memory_total"], step["error"])
    index = "-" if step["index"] is None else step["index"]
    return f"NVML index {index} -> {view}" + ("" if step["right"] else "   <- not this device")


def _print(found: dict[str, Any]) -> None:
    capability = found["capability"]
    if isinstance(capability, list):
        capability = "{}.{}".format(*capability)
    print(f"{found['uuid']}: {shim.View(**found['device'])}, capability {capability}")
    mig = found["mig"]
    if mig is None:
        print("  not a MIG device: the daemon does not arm the fix for it")
    else:
        print(
            f"  MIG device {mig['index_in_parent']} of GPU {mig['parent_index']} "
            f"({mig['parent_uuid']})"
        )
    print(f"  vLLM alone:    {_route(found['vllm_alone'])}")
    if found["with_fix"] is not None:
        print(f"  with the fix:  {_route(found['with_fix'])}")


def run(args: argparse.Namespace) -> int:
    with Nvml.open(args.topology) as nv:
        uuids = args.uuid or [s.uuid for s in nv.inventory().slices]
        found = [nv.run(functools.partial(lookups, uuid=u), f"lookups for {u}") for u in uuids]
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for item in found:
            _print(item)
    return 0
