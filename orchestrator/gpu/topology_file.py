"""A fake GPU host described in TOML: the topology file, its parsing, and the memory sidecar.

Topology format (TOML; every file shipped in orchestrator/gpu/topologies/ is an example, and
`--topology NAME` picks one of those by its stem, e.g. `--topology a100-mixed`):

    [driver]                      # optional
    privileged = true             # false: like a non-root caller, reading a MIG-enabled GPU's
                                  # aggregate memory or its GPU instances raises NoPermission

    [[gpu]]                       # one per physical GPU, in index order
    name = "NVIDIA A100-SXM4-80GB"
    uuid = "GPU-…"
    mig = "enabled"               # "enabled" | "disabled" | "unsupported" (no MIG: mode query
                                  # raises NotSupported)
    mig_pending = "enabled"       # optional, default = mig; differs while a GPU reset is pending
    profiles = "a100-80gb"        # MIG profile table (PROFILE_TABLES); required unless unsupported
    max_mig_devices = 7           # optional (default 7): nvmlDeviceGetMaxMigDeviceCount, MIG on
    memory_total_mib = 81920
    memory_used_mib = 0           # optional: memory held outside any MIG device
    compute_capability = "8.0"    # optional: nvmlDeviceGetCudaComputeCapability; default the
                                  # profile table's GPU family's (8.0 A100, 9.0 H100/H200)
    power_w = 64.3                # optional telemetry; a missing value makes its call raise
    temperature_c = 31            #   NotSupported
    sm_clock_mhz = 1410
    mem_clock_mhz = 1593
    sm_util_pct = 0               # optional, both or neither; NVML has no utilisation while MIG
    mem_util_pct = 0              #   is on, so these are only served when mig != "enabled"

    [[gpu.mig_device]]            # only when mig = "enabled"; none at all is allowed
    slot = 0                      # index for nvmlDeviceGetMigDeviceHandleByIndex; gaps are allowed
                                  # and raise NotFound, as the driver's sparse slots do
    uuid = "MIG-…"
    profile = "3g.40gb"           # a GPU-instance profile of the GPU's table ("1g.10gb+me" too)
    gi_id = 2                     # unique per GPU (one compute instance per GPU instance)
    ci_id = 0
    compute_slices = 3            # optional, default the profile's; fewer gives e.g. "1c.3g.40gb"
    memory_used_mib = 0           # optional

Held memory: a test makes a slice (or a MIG-off GPU) "hold" memory while a daemon runs on the
topology with `hold_memory(topology, uuid, used_bytes)` and frees it with `release_memory`. They
write the sidecar `<topology stem>.memory.json` ({uuid: used_bytes}, replaced atomically) next to
the topology; every fake reading memory re-reads that file when it changes, in any process. The
topology itself is read once, by `load`.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from orchestrator.gpu.mig_profiles import GPU_MODELS, MEMORY_SLICES, PROFILE_TABLES, GiProfile
from orchestrator.units import MIB

MIG_MODES = ("enabled", "disabled", "unsupported")
TELEMETRY = (
    "power_w",
    "temperature_c",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "sm_util_pct",
    "mem_util_pct",
)


class TopologyError(ValueError):
    """A topology or memory file is malformed; the message names the file and the field."""


# eq=False: handles compare by identity, like the driver's pointers.
@dataclass(frozen=True, eq=False)
class FakeMigDevice:
    slot: int
    uuid: str
    profile: GiProfile
    gi_id: int
    ci_id: int
    compute_slices: int
    memory_used_bytes: int
    gpu_index: int

    @property
    def memory_total_bytes(self) -> int:
        return self.profile.memory_mib * MIB

    @property
    def profile_name(self) -> str:
        """The driver's name: the GI profile, prefixed by `Nc.` for a smaller compute instance."""
        if self.compute_slices == self.profile.slices:
            return self.profile.name
        return f"{self.compute_slices}c.{self.profile.name}"


@dataclass(frozen=True, eq=False)
class FakeGpu:
    index: int
    name: str
    uuid: str
    mig: str
    mig_pending: str
    profiles: tuple[GiProfile, ...]
    max_mig_devices: int
    memory_total_bytes: int
    memory_used_bytes: int
    compute_capability: tuple[int, int] | None  # None: the topology gives none
    telemetry: Mapping[str, float]
    mig_devices: tuple[FakeMigDevice, ...]


@dataclass(frozen=True)
class Topology:
    path: Path
    privileged: bool
    gpus: tuple[FakeGpu, ...]

    def device(self, uuid: str) -> FakeGpu | FakeMigDevice | None:
        """The GPU or MIG device of `uuid`; MIG devices also by the pre-R470 form
        `MIG-GPU-<parent uuid>/<gi>/<ci>`, which NVML still accepts."""
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
            for mig in gpu.mig_devices:
                if uuid in (mig.uuid, f"MIG-{gpu.uuid}/{mig.gi_id}/{mig.ci_id}"):
                    return mig
        return None


_REQUIRED = object()
_KIND_NAMES: Mapping[type, str] = MappingProxyType(
    {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a table",
        list: "an array of tables",
    }
)


class _Fields:
    """Typed reads from one TOML table, each error naming the file and the field's path."""

    def __init__(self, path: Path, where: str, data: object, known: tuple[str, ...]) -> None:
        self.path, self.where = path, where
        if not isinstance(data, dict):
            raise self.error("", "must be a table")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise self.error("", f"unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        self.data: dict[str, Any] = data

    def error(self, key: str, problem: str) -> TopologyError:
        field = ".".join(part for part in (self.where, key) if part) or "top level"
        return TopologyError(f"{self.path}: {field}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        wrong_bool = isinstance(value, bool) and kind is not bool  # TOML true is no number
        if wrong_bool or not isinstance(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise self.error(key, f"must be {names}, not {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _REQUIRED) -> str:
        value: str = self.get(key, str, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def count(self, key: str, default: Any = _REQUIRED, minimum: int = 0) -> int:
        value: int = self.get(key, int, default)
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, not {value}")
        return value

    def mib(self, key: str, default: Any = _REQUIRED) -> int:
        """A size given in MiB (int or float), returned in bytes."""
        value = self.get(key, (int, float), default)
        if value < 0:
            raise self.error(key, f"must be >= 0, not {value}")
        return int(value * MIB)

    def uuid(self, key: str, prefix: str) -> str:
        value: str = self.get(key, str)
        if not value.startswith(prefix) or len(value) <= len(prefix):
            raise self.error(key, f"must look like {prefix}<uuid>, not {value!r}")
        return value


def load_topology(path: Path) -> Topology:
    """Parse and check a topology file; raises TopologyError naming the file and field."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        names = ", ".join(sorted(shipped_topologies()))
        raise TopologyError(
            f"{path}: cannot read topology file: {e.strerror or e} (shipped topologies: {names})"
        ) from e
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{path}: not valid TOML: {e}") from e
    top = _Fields(path, "", data, ("driver", "gpu"))
    driver = _Fields(path, "driver", top.get("driver", dict, {}), ("privileged",))
    gpu_tables = top.get("gpu", list, [])
    gpus = tuple(_parse_gpu(path, i, table) for i, table in enumerate(gpu_tables))
    seen: dict[str, str] = {}
    for gpu in gpus:
        for where, uuid in [(f"gpu[{gpu.index}]", gpu.uuid)] + [
            (f"gpu[{gpu.index}].mig_device slot {m.slot}", m.uuid) for m in gpu.mig_devices
        ]:
            if uuid in seen:
                raise TopologyError(f"{path}: {where}.uuid: {uuid} is also used by {seen[uuid]}")
            seen[uuid] = where
    return Topology(
        path=path,
        privileged=driver.get("privileged", bool, True),
        gpus=gpus,
    )


def _parse_gpu(path: Path, index: int, table: object) -> FakeGpu:
    where = f"gpu[{index}]"
    keys = ("name", "uuid", "mig", "mig_pending", "profiles", "max_mig_devices", "memory_total_mib")
    more = ("memory_used_mib", "compute_capability", "mig_device")
    f = _Fields(path, where, table, (*keys, *more, *TELEMETRY))
    mig = f.choice("mig", MIG_MODES)
    mig_pending = f.choice("mig_pending", MIG_MODES, mig)
    if (mig == "unsupported") != (mig_pending == "unsupported"):
        raise f.error(
            "mig_pending", "a GPU either supports MIG or not: both or neither unsupported"
        )
    profiles: tuple[GiProfile, ...] = ()
    capability: tuple[int, int] | None = None
    if mig == "unsupported":
        for key in ("profiles", "max_mig_devices"):
            if key in f.data:
                raise f.error(key, 'makes no sense with mig = "unsupported"')
    else:
        family = f.choice("profiles", tuple(PROFILE_TABLES))
        profiles, capability = PROFILE_TABLES[family], GPU_MODELS[family].capability
    if "compute_capability" in f.data:
        capability = _capability(f)
    telemetry = {k: float(f.get(k, (int, float))) for k in TELEMETRY if k in f.data}
    if ("sm_util_pct" in telemetry) != ("mem_util_pct" in telemetry):
        raise f.error("sm_util_pct", "give sm_util_pct and mem_util_pct together, or neither")
    total = f.mib("memory_total_mib")
    used = f.mib("memory_used_mib", 0)
    if total == 0 or used > total:
        raise f.error("memory_used_mib", "must be <= memory_total_mib, which must be > 0")
    max_mig = f.count("max_mig_devices", 7, minimum=1) if profiles else 0
    device_tables = f.get("mig_device", list, [])
    if device_tables and mig != "enabled":
        raise f.error("mig_device", 'MIG devices exist only with mig = "enabled"')
    devices = tuple(
        _parse_mig_device(path, f"{where}.mig_device[{j}]", t, index, profiles, max_mig)
        for j, t in enumerate(device_tables)
    )
    _check_layout(f, devices)
    return FakeGpu(
        index=index,
        name=f.get("name", str),
        uuid=f.uuid("uuid", "GPU-"),
        mig=mig,
        mig_pending=mig_pending,
        profiles=profiles,
        max_mig_devices=max_mig,
        memory_total_bytes=total,
        memory_used_bytes=used,
        compute_capability=capability,
        telemetry=MappingProxyType(telemetry),
        mig_devices=tuple(sorted(devices, key=lambda m: m.slot)),
    )


def _capability(f: _Fields) -> tuple[int, int]:
    text: str = f.get("compute_capability", str)
    major, dot, minor = text.partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise f.error("compute_capability", f'must look like "8.0", not {text!r}')
    return int(major), int(minor)


def _parse_mig_device(
    path: Path,
    where: str,
    table: object,
    gpu_index: int,
    profiles: tuple[GiProfile, ...],
    max_mig: int,
) -> FakeMigDevice:
    keys = ("slot", "uuid", "profile", "gi_id", "ci_id", "compute_slices", "memory_used_mib")
    f = _Fields(path, where, table, keys)
    by_name = {p.name: p for p in profiles}
    profile = by_name[f.choice("profile", tuple(by_name))]
    slot = f.count("slot")
    if slot >= max_mig:
        raise f.error("slot", f"must be < max_mig_devices ({max_mig}), not {slot}")
    compute_slices = f.count("compute_slices", profile.slices, minimum=1)
    if compute_slices > profile.slices:
        raise f.error("compute_slices", f"{profile.name} has only {profile.slices} compute slices")
    used = f.mib("memory_used_mib", 0)
    if used > profile.memory_mib * MIB:
        raise f.error("memory_used_mib", f"exceeds the {profile.memory_mib} MiB of {profile.name}")
    return FakeMigDevice(
        slot=slot,
        uuid=f.uuid("uuid", "MIG-"),
        profile=profile,
        gi_id=f.count("gi_id"),
        ci_id=f.count("ci_id"),
        compute_slices=compute_slices,
        memory_used_bytes=used,
        gpu_index=gpu_index,
    )


def _check_layout(f: _Fields, devices: tuple[FakeMigDevice, ...]) -> None:
    """Reject layouts no driver would create: clashing slots or GIs, more memory than the GPU."""
    for attr in ("slot", "gi_id"):
        values = [getattr(m, attr) for m in devices]
        clash = next((v for v in values if values.count(v) > 1), None)
        if clash is not None:
            raise f.error("mig_device", f"two MIG devices have {attr} = {clash}")
    if sum(m.profile.memory_slices for m in devices) > MEMORY_SLICES:
        raise f.error(
            "mig_device", f"the GPU instances need more than {MEMORY_SLICES} memory slices"
        )
    for profile in {m.profile for m in devices}:
        if sum(m.profile == profile for m in devices) > profile.instances:
            raise f.error("mig_device", f"at most {profile.instances} x {profile.name} can exist")


def shipped_topologies() -> dict[str, Path]:
    """Topology files shipped as package data, by name (the file's stem)."""
    folder = resources.files(__package__).joinpath("topologies")
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    }


def resolve_topology(value: Path) -> Path:
    """A topology file path as given, or a shipped topology named without a folder or suffix."""
    if value.exists() or value.parent != Path(".") or value.suffix:
        return value
    return shipped_topologies().get(value.name, value)


def memory_file(topology: Path) -> Path:
    """The sidecar holding memory that tests make slices hold: `<stem>.memory.json` beside it."""
    return topology.with_name(f"{topology.stem}.memory.json")


def hold_memory(topology: Path, uuid: str, used_bytes: int) -> None:
    """Make device `uuid` of `topology` report `used_bytes` used, in every process reading it."""
    device = load_topology(topology).device(uuid)
    if device is None:
        raise TopologyError(f"{topology}: no GPU or MIG device has uuid {uuid}")
    if not 0 <= used_bytes <= device.memory_total_bytes:
        raise ValueError(f"{uuid}: used_bytes must be 0..{device.memory_total_bytes}")
    held = _read_memory_file(memory_file(topology))
    _write_memory_file(memory_file(topology), {**held, uuid: used_bytes})


def release_memory(topology: Path, uuid: str | None = None) -> None:
    """Undo hold_memory for `uuid`, or for every device when None."""
    path = memory_file(topology)
    held = {} if uuid is None else _read_memory_file(path)
    if uuid is not None:
        held.pop(uuid, None)
    _write_memory_file(path, held)


def _read_memory_file(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise TopologyError(f"{path}: cannot read memory file: {e}") from e
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in data.items()
    ):
        raise TopologyError(f'{path}: must be a JSON object {{"<uuid>": <used bytes>, ...}}')
    return data


def _write_memory_file(path: Path, held: Mapping[str, int]) -> None:
    # Replace atomically: a daemon reading concurrently sees the old or the new file, never half.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        json.dump(dict(held), out)
    os.replace(tmp, path)


class HeldMemory:
    """The sidecar's contents, re-read whenever the file changes (it is replaced, never edited)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._held: dict[str, int] = {}

    def get(self, uuid: str, default: int) -> int:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._held = None, {}
            return default
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._held, self._stamp = _read_memory_file(self.path), stamp
        return self._held.get(uuid, default)
