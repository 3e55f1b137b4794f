"""NVIDIA's names for MIG profiles, computed the way go-nvlib's NewMigProfile does, from the
GPU-instance profiles NVML lists (real pynvml or the fake: `lib` is either)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.units import GIB, MIB

log = logging.getLogger(__name__)

# GPU-instance profile enums (pynvml constant names) → compute slices G and the name suffix
# NVIDIA gives them, as go-nvlib's NewMigProfile does. Enums an older pynvml lacks are skipped.
_GI_ENUMS: tuple[tuple[str, int, str], ...] = tuple(
    (f"NVML_GPU_INSTANCE_PROFILE_{enum}", g, suffix)
    for enum, g, suffix in (
        ("1_SLICE", 1, ""),
        ("1_SLICE_REV1", 1, "+me"),
        ("1_SLICE_REV2", 1, ""),
        ("1_SLICE_GFX", 1, "+gfx"),
        ("1_SLICE_NO_ME", 1, "-me"),
        ("1_SLICE_ALL_ME", 1, "+me.all"),
        ("2_SLICE", 2, ""),
        ("2_SLICE_REV1", 2, "+me"),
        ("2_SLICE_GFX", 2, "+gfx"),
        ("2_SLICE_NO_ME", 2, "-me"),
        ("2_SLICE_ALL_ME", 2, "+me.all"),
        ("3_SLICE", 3, ""),
        ("3_SLICE_GFX", 3, "+gfx"),
        ("4_SLICE", 4, ""),
        ("4_SLICE_GFX", 4, "+gfx"),
        ("6_SLICE", 6, ""),
        ("7_SLICE", 7, ""),
        ("8_SLICE", 8, ""),
    )
)

# The driver names a MIG device "<GPU name> MIG <profile>", e.g. "NVIDIA H200 MIG 3g.71gb".
_NAME_PROFILE = re.compile(r" MIG ((?:\d+c\.)?\d+g\.\d+gb(?:[+-][a-z.]+)?)$")


@dataclass(frozen=True)
class MigProfileInfo:
    """A GPU-instance profile a GPU offers, as a row of `nvidia-smi mig -lgip`."""

    name: str  # NVIDIA's name, computed the go-nvlib way
    driver_name: str | None  # the driver's own name for it, where the driver gives one
    id: int  # the lgip ID
    slices: int
    instances: int  # how many can exist at once
    memory_bytes: int
    sm_count: int


def mig_profile_name(
    g: int, c: int, memory_mib: int, gpu_total_bytes: int, suffix: str = ""
) -> str:
    """NVIDIA's profile name ("3g.40gb", "1c.3g.40gb", "1g.10gb+me"), computed as go-nvlib does."""
    eighths = math.ceil(memory_mib * MIB / gpu_total_bytes * 8) / 8
    total_gb = -(-gpu_total_bytes // GIB)
    # Go's math.Round rounds halves up; Python's round() would make the H200's 70.5 "3g.70gb".
    gb = math.floor(eighths * total_gb + 0.5)
    return (f"{g}g.{gb}gb" if c == g else f"{c}c.{g}g.{gb}gb") + suffix


def offered(lib: Any, handle: Any, gpu_total: int | None) -> list[MigProfileInfo]:
    """The GPU-instance profiles GPU `handle` offers; `gpu_total` is its memory (None when this
    caller may not read it: then only profiles the driver names itself are listed)."""
    profiles = []
    for (g, suffix), info in gi_profiles(lib, handle):
        raw = getattr(info, "name", "")  # only the v2 query has the driver's name
        raw = raw.decode() if isinstance(raw, bytes) else raw  # str since nvidia-ml-py 11
        driver_name = raw.removeprefix("MIG ") if raw else None
        if gpu_total is not None:
            name = mig_profile_name(g, g, info.memorySizeMB, gpu_total, suffix)
        elif driver_name is not None:
            name = driver_name
        else:
            continue  # can't be named without the GPU's memory (needs privileges)
        profiles.append(
            MigProfileInfo(
                name=name,
                driver_name=driver_name,
                id=info.id,
                slices=info.sliceCount,
                instances=info.instanceCount,
                memory_bytes=info.memorySizeMB * MIB,
                sm_count=info.multiprocessorCount,
            )
        )
    return profiles


def derive_profile(
    lib: Any, parent: Any, handle: Any, gi_id: int, gpu_total: int | None, uuid: str
) -> str:
    """NVIDIA's name for the profile of MIG device `handle` (of GPU `parent`)."""
    attrs = lib.nvmlDeviceGetAttributes(handle)
    c, memory_mib = attrs.computeInstanceSliceCount, attrs.memorySizeMB
    gi = _gi_enum(lib, parent, gi_id) if gpu_total is not None else None
    if gi is not None and gpu_total is not None:
        g, suffix = gi
        return mig_profile_name(g, c, memory_mib, gpu_total, suffix)
    # Unprivileged callers can't read GPU instances; the driver's device name carries the
    # profile it gave the instance.
    match = _NAME_PROFILE.search(lib.nvmlDeviceGetName(handle))
    if match:
        return match.group(1)
    # Last resort: a name that can't be mistaken for one of NVIDIA's (it may be a +me variant).
    g = attrs.gpuInstanceSliceCount
    name = f"{g}g.{memory_mib}mib" if c == g else f"{c}c.{g}g.{memory_mib}mib"
    log.warning("MIG device %s: cannot read its GPU-instance profile; calling it %s", uuid, name)
    return name


def _gi_enum(lib: Any, parent: Any, gi_id: int) -> tuple[int, str] | None:
    """(G, suffix) of GPU instance `gi_id`, by matching its profile ID against each enum."""
    unreadable = (
        lib.NVMLError_NoPermission,
        lib.NVMLError_NotSupported,
        lib.NVMLError_FunctionNotFound,
    )
    try:
        profile_id = lib.nvmlGpuInstanceGetInfo(
            lib.nvmlDeviceGetGpuInstanceById(parent, gi_id)
        ).profileId
    except unreadable:
        return None
    return next((gs for gs, info in gi_profiles(lib, parent) if info.id == profile_id), None)


def gi_profiles(lib: Any, parent: Any) -> Iterator[tuple[tuple[int, str], Any]]:
    """((G, suffix), profile info) of each GPU-instance profile the GPU offers."""
    for enum_name, g, suffix in _GI_ENUMS:
        enum = getattr(lib, enum_name, None)
        if enum is None:
            continue  # an older nvidia-ml-py without this enum
        try:
            try:
                info = lib.nvmlDeviceGetGpuInstanceProfileInfo(parent, enum, version=2)
            except lib.NVMLError_FunctionNotFound:  # driver before the v2 query
                info = lib.nvmlDeviceGetGpuInstanceProfileInfo(parent, enum, version=1)
        except (lib.NVMLError_NotSupported, lib.NVMLError_InvalidArgument):
            continue  # this GPU has no such profile
        yield (g, suffix), info
