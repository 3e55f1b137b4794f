"""Every NVML call of the orchestrator: GPU and MIG discovery, slice memory, telemetry samples.

The same code runs on the real `pynvml` (nvidia-ml-py) and on orchestrator.gpu.nvml_fake, a
look-alike module driven by a topology file. Imports stay stdlib + pynvml + inventory + units, so
this module works on a bare GPU host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from orchestrator.gpu import mig_naming
from orchestrator.gpu.inventory import Gpu, Inventory, Slice
from orchestrator.gpu.mig_naming import MigProfileInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

NO_TOPOLOGY_HINT = (
    "To run without a GPU, pass --topology with a fake topology: a file, or a shipped name such as "
    "a100-mixed (orchestrator/gpu/topologies/)."
)


class NvmlError(RuntimeError):
    """An NVML call failed."""


class NvmlUnavailable(NvmlError):
    """NVML cannot be used here: no driver, no nvidia-ml-py, or a bad topology file."""


class UnknownDevice(NvmlError, LookupError):
    """No GPU or MIG device has the UUID asked for."""


@dataclass(frozen=True)
class SliceSample:
    uuid: str
    profile: str | None  # None for a whole GPU
    gi_id: int | None
    ci_id: int | None
    memory_used_bytes: int
    memory_total_bytes: int


@dataclass(frozen=True)
class GpuSample:
    """One GPU's telemetry at one instant; None where NVML does not report the value."""

    index: int
    uuid: str
    name: str
    mig_enabled: bool
    sm_util_pct: int | None  # always None with MIG on: NVML has no utilisation for MIG
    mem_util_pct: int | None
    power_w: float | None
    temperature_c: int | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    memory_used_bytes: int
    memory_total_bytes: int
    slices: tuple[SliceSample, ...]


@dataclass(frozen=True)
class _MigDevice:
    handle: Any
    uuid: str
    gi_id: int
    ci_id: int
    memory_used_bytes: int
    memory_total_bytes: int


class Nvml:
    """One NVML session over `lib`, the real pynvml module or a pynvml-like fake."""

    def __init__(self, lib: Any, source: str) -> None:
        """Initialise NVML through `lib`; raises NvmlUnavailable when that fails."""
        self._lib = lib
        self.source = source  # Inventory.source: "nvml" or "topology:<path>"
        self._profiles: dict[str, str] = {}  # MIG UUID → profile name; a UUID never changes profile
        self._memory_v2 = getattr(lib, "nvmlMemory_v2", None)
        try:
            lib.nvmlInit()
        except lib.NVMLError as e:
            raise NvmlUnavailable(
                f"cannot initialise NVML: {e}. Is the NVIDIA driver installed and loaded "
                f"(does nvidia-smi work)? {NO_TOPOLOGY_HINT}"
            ) from e
        self._open = True

    @classmethod
    def open(cls, topology: Path | None) -> Nvml:
        """The real driver when `topology` is None, else the fake built from that topology file."""
        if topology is not None:
            from orchestrator.gpu import nvml_fake, topology_file

            try:
                return cls(nvml_fake.load(topology), f"topology:{topology}")
            except topology_file.TopologyError as e:
                raise NvmlUnavailable(str(e)) from e
        try:
            import pynvml
        except ImportError as e:
            raise NvmlUnavailable(
                f"the nvidia-ml-py package (module pynvml) is not installed. {NO_TOPOLOGY_HINT}"
            ) from e
        return cls(pynvml, "nvml")

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self._lib.nvmlShutdown()
            except self._lib.NVMLError as e:
                log.warning("nvmlShutdown failed: %s", e)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- public queries ---------------------------------------------------------------------
    def inventory(self) -> Inventory:
        """Every GPU with its slices: MIG devices when MIG is on, else the whole GPU."""
        with self._errors("discovery"):
            return Inventory(
                gpus=tuple(self._discover(i, h) for i, h in self._gpus()), source=self.source
            )

    def slice_memory(self, uuid: str) -> tuple[int, int]:
        """(used_bytes, total_bytes) of a MIG device or whole GPU, read now."""
        lib = self._lib
        with self._errors(f"memory of {uuid}"):
            try:
                handle = lib.nvmlDeviceGetHandleByUUID(uuid)
            except (lib.NVMLError_NotFound, lib.NVMLError_InvalidArgument) as e:
                raise UnknownDevice(f"no GPU or MIG device has UUID {uuid}") from e
            return self._memory(handle)

    def run(self, call: Callable[[Any], T], what: str) -> T:
        """`call(lib)` with this session's pynvml-like module, for NVML code that must stay
        self-contained elsewhere (the engine-side MIG fix); its errors become NvmlError."""
        with self._errors(what):
            return call(self._lib)

    def slice_pids(self, uuid: str) -> set[int] | None:
        """pids of the compute processes on a MIG device or whole GPU; None if NVML cannot say."""
        lib = self._lib
        query = getattr(lib, "nvmlDeviceGetComputeRunningProcesses", None)
        if query is None:  # the topology fake models no processes
            return None
        with self._errors(f"processes of {uuid}"):
            try:
                handle = lib.nvmlDeviceGetHandleByUUID(uuid)
            except (lib.NVMLError_NotFound, lib.NVMLError_InvalidArgument) as e:
                raise UnknownDevice(f"no GPU or MIG device has UUID {uuid}") from e
            try:
                return {int(p.pid) for p in query(handle)}
            except (lib.NVMLError_NotSupported, lib.NVMLError_NoPermission):
                return None

    def sample(self) -> list[GpuSample]:
        """Telemetry of every GPU now, with the memory of each of its slices."""
        with self._errors("sampling"):
            return [self._sample(i, h) for i, h in self._gpus()]

    def mig_profiles(self, gpu_index: int) -> list[MigProfileInfo]:
        """The GPU-instance profiles GPU `gpu_index` offers, like `nvidia-smi mig -lgip`."""
        lib = self._lib
        with self._errors("MIG profile listing"):
            handle = lib.nvmlDeviceGetHandleByIndex(gpu_index)
            memory = self._gpu_memory(handle)
            return mig_naming.offered(lib, handle, None if memory is None else memory[1])

    # --- discovery --------------------------------------------------------------------------
    def _discover(self, index: int, handle: Any) -> Gpu:
        lib = self._lib
        uuid, name = lib.nvmlDeviceGetUUID(handle), lib.nvmlDeviceGetName(handle)
        if not self._mig_enabled(index, handle):
            used, total = self._memory(handle)
            whole = Slice(uuid, index, uuid, name, None, total, used)
            return Gpu(index, uuid, name, total, used, mig_enabled=False, slices=(whole,))
        gpu_memory = self._gpu_memory(handle)
        migs = self._mig_devices(handle)
        slices = tuple(
            Slice(
                uuid=m.uuid,
                gpu_index=index,
                gpu_uuid=uuid,
                gpu_name=name,
                profile=self._profile(handle, m, gpu_memory[1] if gpu_memory else None),
                memory_total_bytes=m.memory_total_bytes,
                memory_used_bytes=m.memory_used_bytes,
                gi_id=m.gi_id,
                ci_id=m.ci_id,
            )
            for m in migs
        )
        if not slices:
            log.warning(
                "GPU %d (%s, %s) has MIG enabled but no MIG devices, so CUDA cannot run on it and "
                "it offers no slice: create GPU and compute instances (nvidia-smi mig -cgi … -C) "
                "or disable MIG",
                index,
                name,
                uuid,
            )
        if gpu_memory is None:
            log.info("GPU %d: aggregate memory needs privileges; reporting its slices' sum", index)
        used, total = gpu_memory or self._slices_memory(migs)
        return Gpu(index, uuid, name, total, used, mig_enabled=True, slices=slices)

    def _gpus(self) -> Iterator[tuple[int, Any]]:
        for index in range(self._lib.nvmlDeviceGetCount()):
            yield index, self._lib.nvmlDeviceGetHandleByIndex(index)

    def _mig_enabled(self, index: int, handle: Any) -> bool:
        lib = self._lib
        try:
            current, pending = lib.nvmlDeviceGetMigMode(handle)
        except (lib.NVMLError_NotSupported, lib.NVMLError_FunctionNotFound):
            return False  # no MIG on this GPU (or driver): schedule it whole
        if pending != current:
            log.warning("GPU %d: MIG mode change pending; a GPU reset applies it", index)
        return bool(current == lib.NVML_DEVICE_MIG_ENABLE)

    def _mig_devices(self, handle: Any) -> list[_MigDevice]:
        lib = self._lib
        devices = []
        for slot in range(lib.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = lib.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except (lib.NVMLError_NotFound, lib.NVMLError_InvalidArgument):
                continue  # slots are sparse: an empty one says nothing about later ones
            used, total = self._memory(mig)
            devices.append(
                _MigDevice(
                    handle=mig,
                    uuid=lib.nvmlDeviceGetUUID(mig),
                    gi_id=lib.nvmlDeviceGetGpuInstanceId(mig),
                    ci_id=lib.nvmlDeviceGetComputeInstanceId(mig),
                    memory_used_bytes=used,
                    memory_total_bytes=total,
                )
            )
        return devices

    def _profile(self, parent: Any, mig: _MigDevice, gpu_total: int | None) -> str:
        """NVIDIA's name for a MIG device's profile, "+me"-style variants included."""
        cached = self._profiles.get(mig.uuid)
        if cached is None:
            cached = self._profiles[mig.uuid] = mig_naming.derive_profile(
                self._lib, parent, mig.handle, mig.gi_id, gpu_total, mig.uuid
            )
        return cached

    # --- memory and telemetry ---------------------------------------------------------------
    def _memory(self, handle: Any) -> tuple[int, int]:
        """(used, total) bytes; v2 where the driver has it: its `used` excludes reserved memory."""
        lib = self._lib
        if self._memory_v2 is not None:
            try:
                info = lib.nvmlDeviceGetMemoryInfo(handle, version=self._memory_v2)
            except (lib.NVMLError_FunctionNotFound, lib.NVMLError_ArgumentVersionMismatch):
                self._memory_v2 = None  # older driver: v1 from now on
            else:
                return int(info.used), int(info.total)
        info = lib.nvmlDeviceGetMemoryInfo(handle)
        return int(info.used), int(info.total)

    def _gpu_memory(self, handle: Any) -> tuple[int, int] | None:
        """A MIG-enabled GPU's aggregate memory, or None where the caller lacks the privilege."""
        try:
            return self._memory(handle)
        except self._lib.NVMLError_NoPermission:
            return None

    @staticmethod
    def _slices_memory(migs: list[_MigDevice]) -> tuple[int, int]:
        return sum(m.memory_used_bytes for m in migs), sum(m.memory_total_bytes for m in migs)

    def _sample(self, index: int, handle: Any) -> GpuSample:
        lib = self._lib
        uuid = lib.nvmlDeviceGetUUID(handle)
        mig = self._mig_enabled(index, handle)
        # With MIG on NVML refuses utilisation outright (NotSupported): don't even ask.
        util = None if mig else self._optional(lib.nvmlDeviceGetUtilizationRates, handle)
        power_mw = self._optional(lib.nvmlDeviceGetPowerUsage, handle)
        if mig:
            migs = self._mig_devices(handle)
            gpu_memory = self._gpu_memory(handle)
            gpu_total = gpu_memory[1] if gpu_memory else None
            slices = tuple(
                SliceSample(
                    uuid=m.uuid,
                    profile=self._profile(handle, m, gpu_total),
                    gi_id=m.gi_id,
                    ci_id=m.ci_id,
                    memory_used_bytes=m.memory_used_bytes,
                    memory_total_bytes=m.memory_total_bytes,
                )
                for m in migs
            )
            used, total = gpu_memory or self._slices_memory(migs)
        else:
            used, total = self._memory(handle)
            slices = (SliceSample(uuid, None, None, None, used, total),)
        return GpuSample(
            index=index,
            uuid=uuid,
            name=lib.nvmlDeviceGetName(handle),
            mig_enabled=mig,
            sm_util_pct=None if util is None else int(util.gpu),
            mem_util_pct=None if util is None else int(util.memory),
            power_w=None if power_mw is None else power_mw / 1000,
            temperature_c=self._optional(
                lib.nvmlDeviceGetTemperature, handle, lib.NVML_TEMPERATURE_GPU
            ),
            sm_clock_mhz=self._optional(lib.nvmlDeviceGetClockInfo, handle, lib.NVML_CLOCK_SM),
            mem_clock_mhz=self._optional(lib.nvmlDeviceGetClockInfo, handle, lib.NVML_CLOCK_MEM),
            memory_used_bytes=used,
            memory_total_bytes=total,
            slices=slices,
        )

    def _optional(self, call: Callable[..., T], *args: Any) -> T | None:
        """`call(*args)`, or None where this GPU or driver does not report the value."""
        lib = self._lib
        try:
            return call(*args)
        except (
            lib.NVMLError_NotSupported,
            lib.NVMLError_FunctionNotFound,
            lib.NVMLError_NoPermission,
        ):
            return None

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn pynvml's errors into NvmlError, so no other module needs to import pynvml."""
        if not self._open:
            raise NvmlError(f"NVML {what}: the session is closed")
        try:
            yield
        except self._lib.NVMLError as e:
            raise NvmlError(f"NVML {what} failed: {e}") from e


def load_inventory(topology: Path | None) -> Inventory:
    """Discover the GPUs once (real driver when `topology` is None) and close NVML again."""
    with Nvml.open(topology) as nvml:
        return nvml.inventory()
