"""Inside a vLLM engine on a MIG slice: make the NVML that vLLM's CUDA platform asks answer for it.

vLLM resolves `CUDA_VISIBLE_DEVICES=MIG-<uuid>` with nvmlDeviceGetHandleByUUID + nvmlDeviceGetIndex
(`NvmlCudaPlatform.device_control_id_to_physical_device_id`, vLLM 0.26 to 0.33). For a MIG handle
NVML answers the MIG device's index within its parent GPU, which vLLM then passes to
nvmlDeviceGetHandleByIndex as a GPU index: it gets another GPU, the whole GPU's memory, or an
NVMLError that kills the engine at start. Once `vllm.platforms.cuda` is imported, this swaps the
NVML module that module uses for one where the parent GPU's index leads to the MIG device, if
and only if vLLM got the slice wrong without it.

The daemon's sitecustomize.py (put first on PYTHONPATH) calls install() in every Python process of
the engine. Standard library only: it runs in vLLM's venv, and imports must stay cheap.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

UUID_ENV = "MIG_ORCH_MIG_UUID"  # the daemon sets it only for an engine on a MIG slice
# UUID_ENV's value in a Kubernetes pod: the device plugin picks the MIG device only at start, so
# the slice is the container's one (NVIDIA_VISIBLE_DEVICES, else the only one NVML shows).
CONTAINER_SLICE = "container"
VISIBLE_ENV = "NVIDIA_VISIBLE_DEVICES"  # the NVIDIA device plugin's envvar device-list strategy
LOGGED_ENV = "MIG_ORCH_NVML_FIX"  # the line already logged; child processes inherit it
TARGET = "vllm.platforms.cuda"
GIB = 1024**3
# Per-physical-GPU queries: unfixed vLLM asked them of the parent GPU, so they keep going there.
_PER_GPU = (
    "nvmlDeviceGetPciInfo",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetPciInfoExt",
    "nvmlDeviceGetNumaNodeId",
    "nvmlDeviceGetCpuAffinity",
    "nvmlDeviceGetCpuAffinityWithinScope",
    "nvmlDeviceGetMemoryAffinity",
    "nvmlDeviceGetP2PStatus",
)
_NOT_HANDLES = (int, float, str, bytes, type(None))


@dataclass(frozen=True)
class MigDevice:
    """NVML's answers about one MIG device."""

    uuid: str  # as NVML spells it (a legacy MIG-GPU-…/gi/ci name resolves to this)
    index_in_parent: int  # nvmlDeviceGetIndex of the MIG handle
    parent_index: int
    parent_uuid: str
    name: str
    memory_total: int
    capability: tuple[int, int] | None


@dataclass(frozen=True)
class View:
    """What a lookup of one device ends on: its name and total memory, or the error raised."""

    name: str | None = None
    memory_total: int | None = None
    error: str | None = None

    def __str__(self) -> str:
        if self.error is not None:
            return self.error
        return f"{self.name!r}, {(self.memory_total or 0) / GIB:.2f} GiB"


@dataclass(frozen=True)
class Decision:
    active: bool
    reason: str

    def line(self) -> str:
        state = "active" if self.active else "inactive"
        return f"[mig-orchestrator] MIG NVML fix {state}: {self.reason}"


def find_mig_device(nvml: Any, uuid: str) -> MigDevice | None:
    """NVML's view of `uuid`, or None when it is not a MIG device; the caller holds nvmlInit."""
    handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
    try:
        is_mig = bool(nvml.nvmlDeviceIsMigDeviceHandle(handle))
    except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
        is_mig = False  # a GPU or driver without MIG
    if not is_mig:
        return None
    parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
    try:
        capability: tuple[int, int] | None = tuple(nvml.nvmlDeviceGetCudaComputeCapability(handle))
    except nvml.NVMLError:
        capability = None
    return MigDevice(
        uuid=nvml.nvmlDeviceGetUUID(handle),
        index_in_parent=nvml.nvmlDeviceGetIndex(handle),
        parent_index=nvml.nvmlDeviceGetIndex(parent),
        parent_uuid=nvml.nvmlDeviceGetUUID(parent),
        name=nvml.nvmlDeviceGetName(handle),
        memory_total=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        capability=capability,
    )


def container_slice(nvml: Any) -> str | None:
    """The UUID of the one MIG device this container holds, or None; the caller holds nvmlInit."""
    visible = os.environ.get(VISIBLE_ENV, "")
    if visible.startswith("MIG-") and "," not in visible:
        return visible
    found = []
    for i in range(nvml.nvmlDeviceGetCount()):
        gpu = nvml.nvmlDeviceGetHandleByIndex(i)
        try:
            slots = nvml.nvmlDeviceGetMaxMigDeviceCount(gpu)
        except nvml.NVMLError:
            continue  # a GPU or driver without MIG
        for j in range(slots):
            try:
                found.append(
                    nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, j))
                )
            except nvml.NVMLError:
                continue  # an empty slot
    return found[0] if len(found) == 1 else None


def index_lookup(nvml: Any, uuid: str) -> tuple[int | None, View]:
    """vLLM's route from a UUID to a device: UUID -> NVML index -> handle by that index."""
    try:
        index = nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(uuid))
    except nvml.NVMLError as e:
        return None, View(error=f"{type(e).__name__}: {e}")
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        view = View(nvml.nvmlDeviceGetName(handle), int(nvml.nvmlDeviceGetMemoryInfo(handle).total))
    except nvml.NVMLError as e:
        view = View(error=f"{type(e).__name__}: {e}")
    return index, view


class SliceNvml:
    """An NVML module in which GPU index `parent_index` is the MIG device; all else unchanged."""

    def __init__(self, nvml: Any, device: MigDevice) -> None:
        self._nvml = nvml
        self._device = device

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._nvml, name)
        return self._on_parent(value) if name in _PER_GPU else value

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        if self._is_slice(handle):
            return self._device.parent_index
        return int(self._nvml.nvmlDeviceGetIndex(handle))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if index == self._device.parent_index:
            return self._nvml.nvmlDeviceGetHandleByUUID(self._device.uuid)
        return self._nvml.nvmlDeviceGetHandleByIndex(index)

    def _is_slice(self, handle: Any) -> bool:
        # Handles are ctypes pointers without value equality: compare what they point at.
        try:
            return bool(self._nvml.nvmlDeviceGetUUID(handle) == self._device.uuid)
        except self._nvml.NVMLError:
            return False

    def _on_parent(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def on_parent(*args: Any, **kwargs: Any) -> Any:
            parent = None
            mapped = []
            for arg in args:
                # Never hand NVML a number (cpuSetSize, a P2P index) as if it were a handle.
                if not isinstance(arg, _NOT_HANDLES) and self._is_slice(arg):
                    parent = parent or self._nvml.nvmlDeviceGetHandleByUUID(
                        self._device.parent_uuid
                    )
                    arg = parent
                mapped.append(arg)
            return call(*mapped, **kwargs)

        return on_parent


def _seen_by(platform: Any) -> View:
    """What vLLM's platform reports for CUDA device 0 (this process's one device)."""
    try:
        return View(platform.get_device_name(0), int(platform.get_device_total_memory(0)))
    except Exception as e:  # vLLM lets NVMLError through, which is no RuntimeError
        return View(error=f"{type(e).__name__}: {e}")


def apply(cuda: ModuleType, uuid: str) -> Decision:
    """Patch the just-imported `vllm.platforms.cuda` for MIG device `uuid` if vLLM misreads it."""
    nvml = getattr(cuda, "pynvml", None)
    platform = getattr(cuda, "NvmlCudaPlatform", None)
    if nvml is None or platform is None:
        return Decision(False, "this vLLM's CUDA platform has no NvmlCudaPlatform using pynvml")
    if getattr(cuda, "CudaPlatform", None) is not platform:
        return Decision(False, "vLLM is not using NVML here, so it asks CUDA, which sees the slice")
    nvml.nvmlInit()
    try:
        if uuid == CONTAINER_SLICE:
            uuid = container_slice(nvml) or ""
        device = find_mig_device(nvml, uuid) if uuid else None
    finally:
        nvml.nvmlShutdown()
    if not uuid:
        return Decision(False, "this container holds no single MIG device")
    if device is None:
        return Decision(False, f"{uuid} is not a MIG device")
    slice_view = View(device.name, device.memory_total)
    before = _seen_by(platform)
    if before == slice_view:
        return Decision(False, f"this vLLM already resolves {uuid} to its slice ({before})")
    cuda.__dict__["pynvml"] = SliceNvml(nvml, device)  # what vLLM's NVML calls go through
    after = _seen_by(platform)
    if after != slice_view:
        cuda.__dict__["pynvml"] = nvml
        return Decision(
            False,
            f"left off: with it vLLM would still see {after}, not the slice ({slice_view})",
        )
    capability = "unknown" if device.capability is None else "{}.{}".format(*device.capability)
    return Decision(
        True,
        f"vLLM resolved {uuid} to NVML index {device.index_in_parent}, the MIG device's index "
        f"within GPU {device.parent_index}, and saw {before}; NVML GPU index "
        f"{device.parent_index} now leads vLLM to the slice: {slice_view}, "
        f"capability {capability}",
    )


def _on_import(cuda: ModuleType) -> None:
    uuid = os.environ.get(UUID_ENV)
    if not uuid:
        return
    try:
        decision = apply(cuda, uuid)
    except Exception as e:  # never break vLLM's start over the fix
        decision = Decision(False, f"could not check vLLM's NVML lookups: {type(e).__name__}: {e}")
    line = decision.line()
    # vLLM's API server, EngineCore and inspection subprocess each decide; say it once.
    if os.environ.get(LOGGED_ENV) != line:
        os.environ[LOGGED_ENV] = line
        print(f"{line} (pid {os.getpid()})", file=sys.stderr, flush=True)


class _Then(importlib.abc.Loader):
    """A module's own loader, plus a call once the module has run."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Everything that later asks the module for its loader (inspect, linecache) gets its own.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._then(module)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then(module)` right after module `name` is first imported."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return None
        sys.meta_path.remove(self)  # once is enough
        spec.loader = _Then(spec.loader, self.then)
        return spec


def install() -> None:
    """Arm the fix in this process when the daemon gave it a MIG slice; a no-op otherwise."""
    if not os.environ.get(UUID_ENV):
        return
    if TARGET in sys.modules:
        _on_import(sys.modules[TARGET])
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(TARGET, _on_import))
