"""MIG facts per GPU model: its GPU-instance profiles, their sizes, and where each may sit.

The one place these facts live: the fake NVML (nvml_fake) serves them and the layout planner
(orchestrator.layout) packs with them. Sources: the profile tables of the NVIDIA MIG user guide
(docs.nvidia.com/datacenter/tesla/mig-user-guide, "Supported MIG Profiles"), `nvidia-smi mig
-lgip` / `-lgipp` output, and NVIDIA mig-parted's deployments/systemd/config-default.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from orchestrator.units import GIB, MIB

MEMORY_SLICES = 8  # MIG memory is an 8-slot axis on A100, H100 and H200
COMPUTE_SLICES = 7  # and 7 compute slices


@dataclass(frozen=True)
class GiProfile:
    """One GPU-instance profile, as a row of `nvidia-smi mig -lgip` shows it."""

    name: str  # NVIDIA's name, e.g. "1g.10gb+me"
    id: int  # the lgip ID (GpuInstanceInfo.profileId)
    enum: str  # the NVML_GPU_INSTANCE_PROFILE_* constant this profile answers to
    slices: int  # compute slices: the G of "3g"
    memory_slices: int  # eighths of the GPU's memory it takes
    memory_mib: int
    sm_count: int
    instances: int  # how many can exist at once
    starts: tuple[int, ...]  # memory slots an instance may start at (`nvidia-smi mig -lgipp`)

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def media_extensions(self) -> bool:
        """The `+me` variant: a 1g instance that owns the GPU's media engines (one at most)."""
        return self.name.endswith("+me")


@dataclass(frozen=True)
class Geometry:
    """What the lgip ID alone fixes: the enum, compute and memory slices, count, placements."""

    enum: str
    slices: int
    memory_slices: int
    instances: int
    starts: tuple[int, ...]


_E = "NVML_GPU_INSTANCE_PROFILE_"
# Identical on A100, H100, H100 NVL and H200; only names and memory sizes differ.
GEOMETRY: Mapping[int, Geometry] = MappingProxyType(
    {
        19: Geometry(_E + "1_SLICE", 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
        20: Geometry(_E + "1_SLICE_REV1", 1, 1, 1, (0, 1, 2, 3, 4, 5, 6)),
        15: Geometry(_E + "1_SLICE_REV2", 1, 2, 4, (0, 2, 4, 6)),
        14: Geometry(_E + "2_SLICE", 2, 2, 3, (0, 2, 4)),
        9: Geometry(_E + "3_SLICE", 3, 4, 2, (0, 4)),
        5: Geometry(_E + "4_SLICE", 4, 4, 1, (0,)),
        0: Geometry(_E + "7_SLICE", 7, 8, 1, (0,)),
    }
)


def profile(name: str, id: int, memory_mib: int, sm_count: int) -> GiProfile:
    """A profile whose geometry follows from its lgip ID (KeyError for an ID not in GEOMETRY)."""
    g = GEOMETRY[id]
    return GiProfile(
        name, id, g.enum, g.slices, g.memory_slices, memory_mib, sm_count, g.instances, g.starts
    )


@dataclass(frozen=True)
class GpuModel:
    """A MIG-capable GPU model: what `--gpu` names and a topology's `profiles =` refers to."""

    key: str  # "a100-80gb": the topology files' `profiles` value
    label: str  # "A100-80GB": what the planner prints
    nvml_name: str  # nvmlDeviceGetName of one such GPU
    memory_total_mib: int  # nvmlDeviceGetMemoryInfo total of the whole GPU
    profiles: tuple[GiProfile, ...]
    # CUDA compute capability (NVIDIA's CUDA GPUs table); None for a GPU known only from NVML.
    capability: tuple[int, int] | None = None

    @property
    def memory_total_bytes(self) -> int:
        return self.memory_total_mib * MIB


def _model(
    key: str,
    label: str,
    nvml_name: str,
    total_mib: int,
    capability: tuple[int, int],
    memory_mib: tuple[int, int, int, int],
    sms: tuple[int, int, int, int, int, int],
    names: tuple[str, str, str, str, str, str],
) -> GpuModel:
    """The seven profiles every 8-memory-slice MIG GPU offers; `memory_mib` is 1g, 1g-2x, 3g, 7g."""
    one, two, half, full = memory_mib
    sm1, sm1x2, sm2, sm3, sm4, sm7 = sms
    n1, n1x2, n2, n3, n4, n7 = names
    profiles = (
        profile(n1, 19, one, sm1),
        profile(n1 + "+me", 20, one, sm1),
        profile(n1x2, 15, two, sm1x2),
        profile(n2, 14, two, sm2),
        profile(n3, 9, half, sm3),
        profile(n4, 5, half, sm4),
        profile(n7, 0, full, sm7),
    )
    return GpuModel(key, label, nvml_name, total_mib, profiles, capability)


# Profile memory (MiB) and SM counts as `nvidia-smi mig -lgip` prints them. H100: what driver
# 580.159.04 reported through Nvml.mig_profiles on a real H100; A100: published lgip output;
# H100 NVL: the GPU operator's node labels on a real H100 NVL (1g.12gb 11008 MiB, 1g.24gb 22144;
# lgip 46.38 / 93.12 GiB); H200: values that round to NVIDIA's names the same way (no H200 lgip
# output was at hand; 1g.35gb = 32.5 GiB matches vllm PR #50463). Totals: nvidia-smi's MiB.
GPU_MODELS: Mapping[str, GpuModel] = MappingProxyType(
    {
        m.key: m
        for m in (
            _model(
                "a100-40gb",
                "A100-40GB",
                "NVIDIA A100-SXM4-40GB",
                40960,
                (8, 0),
                (4864, 9984, 20096, 40448),
                (14, 14, 28, 42, 56, 98),
                ("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
            ),
            _model(
                "a100-80gb",
                "A100-80GB",
                "NVIDIA A100-SXM4-80GB",
                81920,
                (8, 0),
                (9728, 19968, 40192, 80896),
                (14, 14, 28, 42, 56, 98),
                ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
            ),
            _model(
                "h100-80gb",
                "H100-80GB",
                "NVIDIA H100 80GB HBM3",
                81559,
                (9, 0),
                (9984, 20096, 40448, 81152),
                (16, 26, 32, 60, 64, 132),
                ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
            ),
            _model(
                "h100-nvl-94gb",
                "H100-NVL-94GB",
                "NVIDIA H100 NVL",
                95830,
                (9, 0),
                (11008, 22144, 47488, 95360),
                (16, 26, 32, 60, 64, 132),
                ("1g.12gb", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"),
            ),
            _model(
                "h200-141gb",
                "H200-141GB",
                "NVIDIA H200",
                143771,
                (9, 0),
                (16384, 33280, 68096, 135680),
                (16, 26, 32, 60, 64, 132),
                ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
            ),
        )
    }
)

PROFILE_TABLES: Mapping[str, tuple[GiProfile, ...]] = MappingProxyType(
    {key: m.profiles for key, m in GPU_MODELS.items()}
)

# What people type for --gpu, beyond the keys and labels themselves.
_ALIASES = {
    "a100": "a100-80gb",
    "h100": "h100-80gb",
    "h100-nvl": "h100-nvl-94gb",
    "h100-94gb": "h100-nvl-94gb",
    "h200": "h200-141gb",
}


def gpu_model(text: str) -> GpuModel:
    """The GPU model `text` names ("A100-80GB", "h200", "H100-NVL"); ValueError listing them."""
    key = text.strip().lower().replace(" ", "-").replace("_", "-")
    key = _ALIASES.get(key, key)
    found = GPU_MODELS.get(key) or next(
        (m for m in GPU_MODELS.values() if m.label.lower() == key), None
    )
    if found is None:
        known = ", ".join(m.label for m in GPU_MODELS.values())
        raise ValueError(f"unknown GPU model {text!r}; known: {known}")
    return found


def model_for_gpu_name(name: str, memory_total_bytes: int) -> GpuModel | None:
    """The GPU model of a GPU NVML reports by name and total memory; None if not a known one."""
    lowered = name.lower()
    gib = memory_total_bytes / GIB
    if "a100" in lowered:
        return GPU_MODELS["a100-40gb" if gib < 60 else "a100-80gb"]
    if "h200" in lowered:
        return GPU_MODELS["h200-141gb"]
    if "h100" in lowered:
        return GPU_MODELS["h100-nvl-94gb" if "nvl" in lowered or gib > 88 else "h100-80gb"]
    return None
