"""The GPUs a layout is planned for: N of a named model, or the real (or simulated) ones."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.gpu.inventory import Inventory
from orchestrator.gpu.mig_naming import MigProfileInfo
from orchestrator.gpu.mig_profiles import GEOMETRY, GpuModel, model_for_gpu_name, profile
from orchestrator.gpu.nvml import Nvml, NvmlError
from orchestrator.units import MIB


@dataclass(frozen=True)
class Target:
    """One GPU the plan may use, and what it holds today when that is known."""

    index: int
    model: GpuModel
    name: str  # as NVML names it
    uuid: str | None  # None for a GPU that exists only in the plan (--gpu, or an extra one)
    now: tuple[str, ...] | None  # its MIG profiles today; () MIG on but empty; None unknown
    mig_now: bool | None  # MIG mode today; None unknown
    extra: bool = False  # not on the host: added to show what one more GPU would hold


def synthetic(
    model: GpuModel, count: int, first_index: int = 0, extra: bool = False
) -> list[Target]:
    """`count` GPUs of `model` that exist only in the plan."""
    return [
        Target(i, model, model.nvml_name, None, None, None, extra)
        for i in range(first_index, first_index + count)
    ]


def from_nvml(nvml: Nvml) -> tuple[list[Target], list[str], Inventory]:
    """The GPUs NVML (or a topology) shows, with notes on those that cannot be planned."""
    inventory = nvml.inventory()
    targets: list[Target] = []
    notes: list[str] = []
    for gpu in inventory.gpus:
        try:
            offered = nvml.mig_profiles(gpu.index)
        except NvmlError:
            offered = []
        known = model_for_gpu_name(gpu.name, gpu.memory_total_bytes)
        model = _model(gpu.name, gpu.memory_total_bytes, offered, known)
        if model is None:
            notes.append(f"GPU{gpu.index} {gpu.name}: no known MIG profiles; not planned")
            continue
        now = tuple(sorted(s.profile or "" for s in gpu.slices)) if gpu.mig_enabled else None
        targets.append(Target(gpu.index, model, gpu.name, gpu.uuid, now, gpu.mig_enabled))
    return targets, notes, inventory


def _model(
    name: str, total_bytes: int, offered: list[MigProfileInfo], known: GpuModel | None
) -> GpuModel | None:
    """The driver's profile sizes when it lists them, else the built-in table for the GPU."""
    usable = [p for p in offered if p.id in GEOMETRY]
    if not usable:
        return known
    profiles = tuple(profile(p.name, p.id, p.memory_bytes // MIB, p.sm_count) for p in usable)
    same_table = known is not None and {p.name for p in profiles} == {
        p.name for p in known.profiles
    }
    return GpuModel(
        key=known.key if known is not None and same_table else name,
        label=known.label if known is not None and same_table else name,
        nvml_name=name,
        memory_total_mib=total_bytes // MIB,
        profiles=profiles,
        capability=known.capability if known is not None else None,
    )
