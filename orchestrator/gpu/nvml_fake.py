"""A pynvml look-alike driven by a TOML topology file, so discovery and telemetry run without a GPU.

`load(path)` returns an object with pynvml's function names, signatures, constants, ctypes result
structs and error classes (the real `pynvml.NVMLError_*`, so `except pynvml.NVMLError_NotFound`
works). orchestrator.gpu.nvml runs the same code against it as against the driver. The topology
file and the held-memory sidecar are described in topology_file.py.

MIG handles answer as the NVML reference documents them: nvml.h of NVML API 13 (NVIDIA/go-nvml
gen/nvml/nvml.h @2f9e261) and the NVML API Reference change log; each call below quotes the part of
the reference it follows. vLLM's CUDA platform relies on these calls, so tests run vLLM's own code
against this fake (tests/integration/test_vllm_mig_platform.py).

Not modelled: GPU-instance placements, several compute instances in one GPU instance, processes.
"""

from __future__ import annotations

from ctypes import c_uint
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml  # error classes, constants and result structs only: nothing here loads the driver

from orchestrator.gpu.topology_file import (
    FakeGpu,
    FakeMigDevice,
    HeldMemory,
    Topology,
    load_topology,
    memory_file,
    resolve_topology,
)


@dataclass(frozen=True)
class _GpuInstance:
    """Handle returned by nvmlDeviceGetGpuInstanceById."""

    gpu: FakeGpu
    mig: FakeMigDevice


def _fail(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # NVMLError.__new__ picks the NVMLError_* subclass


class FakeNvml:
    """The pynvml subset that orchestrator.gpu.nvml uses, answering from a Topology."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.init_count = 0  # nvmlInit/nvmlShutdown are reference-counted, as in NVML
        self._held = HeldMemory(memory_file(topology.path))

    def __getattr__(self, name: str) -> Any:
        # Constants, structs and error classes come from the real module; functions this fake
        # lacks must fail loudly instead of reaching the real driver.
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(pynvml, name)
        if callable(value) and not isinstance(value, type):
            raise AttributeError(f"the fake NVML does not implement {name}()")
        return value

    # --- init -------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._ready()
        self.init_count -= 1

    # --- devices ----------------------------------------------------------------------------
    # Quotes are from nvml.h (NVML API 13) unless marked otherwise.
    def nvmlDeviceGetCount(self) -> int:
        # "Retrieves the number of compute devices in the system. A compute device is a single
        # GPU." MIG devices are not counted.
        self._ready()
        return len(self.topology.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        # "@param index The index of the target GPU, >= 0 and < accessibleDevices";
        # "NVML_ERROR_INVALID_ARGUMENT if index is invalid". Indices name GPUs, never MIG devices.
        self._ready()
        if not 0 <= index < len(self.topology.gpus):
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.topology.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu | FakeMigDevice:
        # "@param uuid The UUID of the target GPU or MIG instance"; "@param device Reference in
        # which to return the device handle or MIG device handle"; "NVML_ERROR_NOT_FOUND if uuid
        # does not match a valid device on the system". NVML API Reference change log (R470):
        # "Updated nvmlDeviceGetHandleByUUID to accept both UUID formats, 'MIG-UUID' and
        # 'MIG-GPU UUID/GID/CID'" (Topology.device takes both).
        self._ready()
        device = self.topology.device(uuid)
        if device is None:
            raise _fail(pynvml.NVML_ERROR_NOT_FOUND)
        return device

    def nvmlDeviceGetIndex(self, handle: FakeGpu | FakeMigDevice) -> int:
        # "When used with MIG device handles this API returns indices that can be passed to
        # nvmlDeviceGetMigDeviceHandleByIndex to retrieve an identical handle. MIG device indices
        # are unique within a device." So a MIG handle answers its slot within its parent, not a
        # GPU index.
        self._ready()
        return handle.slot if isinstance(handle, FakeMigDevice) else handle.index

    def nvmlDeviceGetName(self, handle: FakeGpu | FakeMigDevice) -> str:
        # "When used with MIG device handles the API returns MIG device names which can be used to
        # identify devices based on their attributes", as "<GPU name> MIG <profile>".
        self._ready()
        if isinstance(handle, FakeMigDevice):
            return f"{self._parent(handle).name} MIG {handle.profile_name}"
        return handle.name

    def nvmlDeviceGetUUID(self, handle: FakeGpu | FakeMigDevice) -> str:
        # "When used with MIG device handles the API returns globally unique UUIDs which can be
        # used to identify MIG devices across both GPU and MIG devices."
        self._ready()
        return handle.uuid

    def nvmlDeviceGetCudaComputeCapability(
        self, handle: FakeGpu | FakeMigDevice
    ) -> tuple[int, int]:
        # "For all products": a MIG device is a partition of its parent's silicon, so it has the
        # parent's capability (what CUDA reports for it too).
        self._ready()
        gpu = self._parent(handle) if isinstance(handle, FakeMigDevice) else handle
        if gpu.compute_capability is None:  # the topology does not say: no guess
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.compute_capability

    def nvmlDeviceGetMemoryInfo(
        self, handle: FakeGpu | FakeMigDevice, version: int | None = None
    ) -> Any:
        # "In MIG mode, if device handle is provided, the API returns aggregate information, only
        # if the caller has appropriate privileges. Per-instance information can be queried by
        # using specific MIG device handles."
        self._ready()
        if isinstance(handle, FakeMigDevice):
            used = self._held.get(handle.uuid, handle.memory_used_bytes)
            total = handle.memory_total_bytes
        else:
            used = self._held.get(handle.uuid, handle.memory_used_bytes)
            total = handle.memory_total_bytes
            if handle.mig == "enabled":
                if not self.topology.privileged:  # the aggregate is for privileged callers only
                    raise _fail(pynvml.NVML_ERROR_NO_PERMISSION)
                used += sum(self._held.get(m.uuid, m.memory_used_bytes) for m in handle.mig_devices)
        if version is None:
            return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)
        if version != pynvml.nvmlMemory_v2:
            raise _fail(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return pynvml.c_nvmlMemory_v2_t(
            version=version, total=total, reserved=0, free=total - used, used=used
        )

    # --- MIG --------------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, handle: FakeGpu | FakeMigDevice) -> list[int]:
        # "NVML_ERROR_NOT_SUPPORTED If device doesn't support MIG mode".
        gpu = self._physical(handle)
        if gpu.mig == "unsupported":
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        mode = {
            "enabled": pynvml.NVML_DEVICE_MIG_ENABLE,
            "disabled": pynvml.NVML_DEVICE_MIG_DISABLE,
        }
        return [mode[gpu.mig], mode[gpu.mig_pending]]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeGpu | FakeMigDevice) -> int:
        # "Returns zero if MIG is not supported or enabled."
        gpu = self._physical(handle)
        return gpu.max_mig_devices if gpu.mig == "enabled" else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(
        self, handle: FakeGpu | FakeMigDevice, index: int
    ) -> FakeMigDevice:
        # "@param device Reference to the parent GPU device handle"; "NVML_ERROR_INVALID_ARGUMENT
        # if device, index or migDevice reference is invalid"; "NVML_ERROR_NOT_FOUND if no valid
        # MIG device was found at index" (slots can be empty).
        gpu = self._physical(handle)
        if gpu.mig != "enabled" or not 0 <= index < gpu.max_mig_devices:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        device = next((m for m in gpu.mig_devices if m.slot == index), None)
        if device is None:
            raise _fail(pynvml.NVML_ERROR_NOT_FOUND)
        return device

    def nvmlDeviceIsMigDeviceHandle(self, handle: FakeGpu | FakeMigDevice) -> c_uint:
        # "Test if the given handle refers to a MIG device."
        self._ready()
        return c_uint(isinstance(handle, FakeMigDevice))  # the real binding returns a raw c_uint

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
        self, handle: FakeGpu | FakeMigDevice
    ) -> FakeGpu:
        # "Get parent device handle from a MIG device handle."
        return self._parent(self._mig(handle))

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeGpu | FakeMigDevice) -> int:
        return self._mig(handle).gi_id

    def nvmlDeviceGetComputeInstanceId(self, handle: FakeGpu | FakeMigDevice) -> int:
        return self._mig(handle).ci_id

    def nvmlDeviceGetAttributes(self, handle: FakeGpu | FakeMigDevice) -> Any:
        mig = self._mig(handle)
        p = mig.profile
        return pynvml.c_nvmlDeviceAttributes(
            multiprocessorCount=p.sm_count * mig.compute_slices // p.slices,
            gpuInstanceSliceCount=p.slices,
            computeInstanceSliceCount=mig.compute_slices,
            memorySizeMB=p.memory_mib,
        )

    def nvmlDeviceGetGpuInstanceById(
        self, handle: FakeGpu | FakeMigDevice, gpu_instance_id: int
    ) -> _GpuInstance:
        gpu = self._physical(handle)
        if not self.topology.privileged:
            raise _fail(pynvml.NVML_ERROR_NO_PERMISSION)
        if gpu.mig != "enabled":
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        mig = next((m for m in gpu.mig_devices if m.gi_id == gpu_instance_id), None)
        if mig is None:
            raise _fail(pynvml.NVML_ERROR_NOT_FOUND)
        return _GpuInstance(gpu, mig)

    def nvmlGpuInstanceGetInfo(self, gpu_instance: _GpuInstance) -> Any:
        self._ready()
        return pynvml.c_nvmlGpuInstanceInfo_t(
            id=gpu_instance.mig.gi_id, profileId=gpu_instance.mig.profile.id
        )

    def nvmlDeviceGetGpuInstanceProfileInfo(
        self, handle: FakeGpu | FakeMigDevice, profile: int, version: int = 2
    ) -> Any:
        gpu = self._physical(handle)
        if not 0 <= profile < pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        p = next((p for p in gpu.profiles if getattr(pynvml, p.enum) == profile), None)
        if p is None:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if version == 2:
            info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
            info.name = f"MIG {p.name}"  # pynvml encodes and decodes it
        elif version == 1:
            info = pynvml.c_nvmlGpuInstanceProfileInfo_t()
        else:
            raise _fail(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        info.id, info.sliceCount, info.instanceCount = p.id, p.slices, p.instances
        info.multiprocessorCount, info.memorySizeMB = p.sm_count, p.memory_mib
        return info

    # --- telemetry (per physical GPU: MIG devices share the parent's) -----------------------
    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu | FakeMigDevice) -> Any:
        gpu = self._gpu_only(handle)
        if gpu.mig == "enabled":  # NVML attributes no utilisation while MIG is on
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.c_nvmlUtilization_t(
            gpu=int(self._telemetry(gpu, "sm_util_pct")),
            memory=int(self._telemetry(gpu, "mem_util_pct")),
        )

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu | FakeMigDevice) -> int:
        return int(self._telemetry(self._gpu_only(handle), "power_w") * 1000)  # milliwatts

    def nvmlDeviceGetTemperature(self, handle: FakeGpu | FakeMigDevice, sensor: int) -> int:
        gpu = self._gpu_only(handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._telemetry(gpu, "temperature_c"))

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu | FakeMigDevice, type: int) -> int:
        gpu = self._gpu_only(handle)
        key = {
            pynvml.NVML_CLOCK_GRAPHICS: "sm_clock_mhz",
            pynvml.NVML_CLOCK_SM: "sm_clock_mhz",
            pynvml.NVML_CLOCK_MEM: "mem_clock_mhz",
        }.get(type)
        if key is None:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(self._telemetry(gpu, key))

    # --- helpers ----------------------------------------------------------------------------
    def _ready(self) -> None:
        if self.init_count <= 0:
            raise _fail(pynvml.NVML_ERROR_UNINITIALIZED)

    def _parent(self, mig: FakeMigDevice) -> FakeGpu:
        return self.topology.gpus[mig.gpu_index]

    def _physical(self, handle: FakeGpu | FakeMigDevice) -> FakeGpu:
        self._ready()
        if not isinstance(handle, FakeGpu):
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle

    def _mig(self, handle: FakeGpu | FakeMigDevice) -> FakeMigDevice:
        self._ready()
        if not isinstance(handle, FakeMigDevice):
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return handle

    def _gpu_only(self, handle: FakeGpu | FakeMigDevice) -> FakeGpu:
        self._ready()
        if not isinstance(handle, FakeGpu):
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return handle

    @staticmethod
    def _telemetry(gpu: FakeGpu, key: str) -> float:
        if key not in gpu.telemetry:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.telemetry[key]


def load(path: Path) -> FakeNvml:
    """A pynvml look-alike for the topology file (or shipped name) `path`; TopologyError if bad."""
    return FakeNvml(load_topology(resolve_topology(path)))
