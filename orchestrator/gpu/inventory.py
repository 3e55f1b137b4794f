"""What the GPUs offer: physical GPUs and the slices (MIG devices or whole GPUs) engines run on."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.units import GIB


@dataclass(frozen=True)
class Slice:
    """One schedulable unit: a MIG device, or a whole GPU whose MIG mode is off."""

    uuid: str  # MIG-… for a MIG device, GPU-… for a whole GPU: what CUDA_VISIBLE_DEVICES takes
    gpu_index: int
    gpu_uuid: str
    gpu_name: str
    profile: str | None  # NVIDIA's name ("3g.40gb", "1g.10gb+me"); None for a whole GPU
    memory_total_bytes: int
    memory_used_bytes: int = 0
    gi_id: int | None = None
    ci_id: int | None = None

    @property
    def is_mig(self) -> bool:
        return self.profile is not None

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_bytes / GIB


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    mig_enabled: bool
    slices: tuple[Slice, ...] = field(default=())


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[Gpu, ...]
    source: str  # "nvml" or "topology:<path>"

    @property
    def slices(self) -> tuple[Slice, ...]:
        return tuple(s for g in self.gpus for s in g.slices)

    def slice_by_uuid(self, uuid: str) -> Slice | None:
        return next((s for s in self.slices if s.uuid == uuid), None)
