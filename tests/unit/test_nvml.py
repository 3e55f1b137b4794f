"""NVML discovery, slice memory and telemetry, run against the topology-driven fake."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pynvml
import pytest

from orchestrator.gpu import mig_profiles, nvml_fake, topology_file
from orchestrator.gpu.mig_naming import mig_profile_name
from orchestrator.gpu.nvml import (
    Nvml,
    NvmlError,
    NvmlUnavailable,
    UnknownDevice,
    load_inventory,
)
from orchestrator.units import GIB, MIB

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "orchestrator" / "gpu" / "topologies"

# (gpu index, profile, gi_id, ci_id) of every slice each shipped topology must yield, in order.
EXPECTED = {
    "a100-mixed.toml": [
        (0, "3g.40gb", 2, 0),
        (0, "2g.20gb", 3, 0),
        (0, "1g.10gb", 9, 0),
        (0, "1g.10gb", 10, 0),
    ],
    "a100x2-3g.toml": [
        (0, "3g.40gb", 1, 0),
        (0, "3g.40gb", 2, 0),
        (1, "3g.40gb", 1, 0),
        (1, "3g.40gb", 2, 0),
    ],
    "h100-whole.toml": [(0, None, None, None)],
    "h200-3g71.toml": [(0, "3g.71gb", 1, 0), (0, "3g.71gb", 2, 0)],
}
A100_3G = "MIG-31b2252a-f41b-47f9-8b11-f2fca23e49d2"  # a100-mixed.toml, slot 0
A100_1G_LAST = "MIG-6a9d5772-e620-413e-9e37-20d21dad41af"  # a100-mixed.toml, slot 6 after gaps
H100 = "GPU-70d48429-167a-41ec-adbf-7b5c447f3863"
GPU_MEMORY_MIB = {key: m.memory_total_mib for key, m in mig_profiles.GPU_MODELS.items()}


@pytest.fixture
def shipped(tmp_path: Path):
    """Copy a shipped topology into tmp_path, so held-memory sidecars never land in the repo."""

    def copy(name: str) -> Path:
        return Path(shutil.copy(TOPOLOGIES / name, tmp_path / name))

    return copy


def write_topology(tmp_path: Path, text: str, name: str = "topo.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def gpu_toml(index: int, profiles: str, devices: str = "", mig: str = "enabled") -> str:
    """A [[gpu]] table of the given profile family with `devices` ([[gpu.mig_device]] tables)."""
    return f"""
[[gpu]]
name = "NVIDIA Test GPU {index}"
uuid = "GPU-00000000-0000-0000-0000-{index:012d}"
mig = "{mig}"
profiles = "{profiles}"
memory_total_mib = {GPU_MEMORY_MIB.get(profiles, 81920)}
{devices}
"""


def mig_toml(index: int, slot: int, profile: str, gi_id: int, extra: str = "") -> str:
    return f"""
[[gpu.mig_device]]
slot = {slot}
uuid = "MIG-00000000-0000-0000-{index:04d}-{slot:012d}"
profile = "{profile}"
gi_id = {gi_id}
ci_id = 0
{extra}
"""


@pytest.mark.parametrize("path", sorted(TOPOLOGIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_topology_inventory(path: Path) -> None:
    inv = load_inventory(path)
    assert inv.source == f"topology:{path}"
    if path.name in EXPECTED:
        got = [(s.gpu_index, s.profile, s.gi_id, s.ci_id) for s in inv.slices]
        assert got == EXPECTED[path.name]
    for gpu in inv.gpus:
        assert gpu.uuid.startswith("GPU-")
        assert gpu.memory_total_bytes >= sum(s.memory_total_bytes for s in gpu.slices)
        for s in gpu.slices:
            assert (s.gpu_uuid, s.gpu_name, s.gpu_index) == (gpu.uuid, gpu.name, gpu.index)
            assert s.uuid.startswith("MIG-" if gpu.mig_enabled else "GPU-")
            assert 0 < s.memory_total_bytes <= gpu.memory_total_bytes
    assert inv.slices and len({s.uuid for s in inv.slices}) == len(inv.slices)


def test_expected_topologies_are_shipped() -> None:
    assert set(EXPECTED) <= {p.name for p in TOPOLOGIES.glob("*.toml")}


def test_sparse_mig_slots_are_skipped_not_stopped_at() -> None:
    fake = nvml_fake.load(TOPOLOGIES / "a100-mixed.toml")
    with Nvml(fake, "test") as nvml:
        gpu = fake.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(pynvml.NVMLError_NotFound):
            fake.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 1)  # the gap discovery must survive
        uuids = [s.uuid for s in nvml.inventory().slices]
    assert len(uuids) == 4
    assert uuids[-1] == A100_1G_LAST


def test_invalid_argument_slot_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = nvml_fake.load(TOPOLOGIES / "a100-mixed.toml")
    real = fake.nvmlDeviceGetMigDeviceHandleByIndex

    def slot_zero_invalid(handle: topology_file.FakeGpu, index: int) -> topology_file.FakeMigDevice:
        if index == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return real(handle, index)

    monkeypatch.setattr(fake, "nvmlDeviceGetMigDeviceHandleByIndex", slot_zero_invalid)
    with Nvml(fake, "test") as nvml:
        profiles = [s.profile for s in nvml.inventory().slices]
    assert profiles == ["2g.20gb", "1g.10gb", "1g.10gb"]


def test_mig_off_gpu_is_one_whole_slice() -> None:
    inv = load_inventory(TOPOLOGIES / "h100-whole.toml")
    (gpu,) = inv.gpus
    assert not gpu.mig_enabled
    (whole,) = gpu.slices
    assert whole.uuid == gpu.uuid == H100
    assert whole.profile is None and whole.gi_id is None and whole.ci_id is None
    assert whole.memory_total_bytes == gpu.memory_total_bytes == 81559 * MIB


def test_gpu_without_mig_support_is_one_whole_slice(tmp_path: Path) -> None:
    path = write_topology(
        tmp_path,
        """
        [[gpu]]
        name = "NVIDIA L4"
        uuid = "GPU-5a202dcd-451e-4617-bd97-963c60295c1a"
        mig = "unsupported"
        memory_total_mib = 23034
        sm_util_pct = 5
        mem_util_pct = 1
        """,
    )
    with Nvml.open(path) as nvml:
        (gpu,) = nvml.inventory().gpus
        (sample,) = nvml.sample()
    assert not gpu.mig_enabled
    assert [(s.uuid, s.profile) for s in gpu.slices] == [(gpu.uuid, None)]
    assert (sample.sm_util_pct, sample.mem_util_pct) == (5, 1)


def test_h200_half_gpu_is_3g_71gb() -> None:
    # 4/8 of 141 GB is 70.5: NVIDIA (Go's math.Round) rounds it up, Python's round() would not.
    assert mig_profile_name(3, 3, 68096, 143771 * MIB) == "3g.71gb"
    profiles = {s.profile for s in load_inventory(TOPOLOGIES / "h200-3g71.toml").slices}
    assert profiles == {"3g.71gb"}


@pytest.mark.parametrize("privileged", [True, False], ids=["root", "unprivileged"])
@pytest.mark.parametrize("family", sorted(mig_profiles.PROFILE_TABLES))
def test_every_profile_gets_nvidias_name(tmp_path: Path, family: str, privileged: bool) -> None:
    """Computed names (or, unprivileged, the driver's) match NVIDIA's for every profile."""
    table = mig_profiles.PROFILE_TABLES[family]
    gpus = "".join(gpu_toml(i, family, mig_toml(i, 0, p.name, 1)) for i, p in enumerate(table))
    # A compute instance smaller than its GPU instance gets the "Nc." prefix.
    split = mig_toml(len(table), 0, table[4].name, 1, "compute_slices = 1")
    gpus += gpu_toml(len(table), family, split)
    path = write_topology(tmp_path, f"[driver]\nprivileged = {str(privileged).lower()}\n{gpus}")
    names = [s.profile for s in load_inventory(path).slices]
    assert names == [p.name for p in table] + [f"1c.{table[4].name}"]
    assert f"{table[0].name}+me" in names


@pytest.mark.parametrize("family", sorted(mig_profiles.PROFILE_TABLES))
def test_mig_profiles_lists_what_the_gpu_offers(tmp_path: Path, family: str) -> None:
    unsupported = """
[[gpu]]
name = "NVIDIA L4"
uuid = "GPU-5a202dcd-451e-4617-bd97-963c60295c1a"
mig = "unsupported"
memory_total_mib = 23034
"""
    path = write_topology(tmp_path, gpu_toml(0, family, mig="disabled") + unsupported)
    with Nvml.open(path) as nvml:
        offered = nvml.mig_profiles(0)
        assert nvml.mig_profiles(1) == []
    table = mig_profiles.PROFILE_TABLES[family]
    assert [(p.name, p.driver_name, p.id) for p in offered] == [
        (p.name, p.name, p.id) for p in table
    ]
    assert [(p.memory_bytes, p.instances) for p in offered] == [
        (p.memory_mib * MIB, p.instances) for p in table
    ]


def test_unnameable_mig_device_gets_a_name_that_is_not_nvidias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_topology(
        tmp_path,
        "[driver]\nprivileged = false\n"
        + gpu_toml(0, "a100-80gb", mig_toml(0, 0, "1g.10gb+me", 1)),
    )
    fake = nvml_fake.load(path)
    monkeypatch.setattr(fake, "nvmlDeviceGetName", lambda handle: "Some GPU")
    with Nvml(fake, "test") as nvml:
        (s,) = nvml.inventory().slices
    # Neither "1g.10gb" nor "1g.10gb+me": without the GI profile it can't tell which.
    assert s.profile == "1g.9728mib"
    assert "cannot read its GPU-instance profile" in caplog.text


def test_unprivileged_caller_sees_slices_and_their_memory(shipped) -> None:
    path = shipped("a100-mixed.toml")
    path.write_text(path.read_text().replace("privileged = true", "privileged = false"))
    (gpu,) = load_inventory(path).gpus
    assert [s.profile for s in gpu.slices] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    # NVML gives the aggregate only to privileged callers: report what the slices add up to.
    assert gpu.memory_total_bytes == sum(s.memory_total_bytes for s in gpu.slices)


def test_mig_enabled_without_slices_offers_no_slice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_topology(
        tmp_path, gpu_toml(0, "h100-80gb") + gpu_toml(1, "h100-80gb", mig="disabled")
    )
    with caplog.at_level(logging.WARNING, logger="orchestrator.gpu.nvml"):
        inv = load_inventory(path)
    empty, whole = inv.gpus
    assert empty.mig_enabled and empty.slices == ()
    assert empty.memory_total_bytes == 81559 * MIB
    assert [s.uuid for s in inv.slices] == [whole.uuid]
    assert "GPU 0" in caplog.text and "MIG enabled but no MIG devices" in caplog.text
    assert "CUDA cannot run" in caplog.text


def test_pending_mig_change_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    devices = 'mig_pending = "disabled"\n' + mig_toml(0, 0, "7g.80gb", 0)
    path = write_topology(tmp_path, gpu_toml(0, "h100-80gb", devices))
    with caplog.at_level(logging.WARNING, logger="orchestrator.gpu.nvml"):
        inv = load_inventory(path)
    assert [s.profile for s in inv.slices] == ["7g.80gb"]
    assert "MIG mode change pending" in caplog.text


def test_slice_memory_follows_held_memory(shipped) -> None:
    path = shipped("a100-mixed.toml")
    with Nvml.open(path) as nvml:
        assert nvml.slice_memory(A100_3G) == (0, 40192 * MIB)
        topology_file.hold_memory(path, A100_3G, 30 * GIB)
        assert nvml.slice_memory(A100_3G) == (30 * GIB, 40192 * MIB)
        inv = nvml.inventory()
        assert inv.slice_by_uuid(A100_3G).memory_used_bytes == 30 * GIB  # type: ignore[union-attr]
        assert inv.gpus[0].memory_used_bytes == 30 * GIB  # the GPU's aggregate includes its slices
        assert nvml.sample()[0].slices[0].memory_used_bytes == 30 * GIB
        topology_file.release_memory(path, A100_3G)
        assert nvml.slice_memory(A100_3G) == (0, 40192 * MIB)


def test_whole_gpu_memory_follows_held_memory(shipped) -> None:
    path = shipped("h100-whole.toml")
    with Nvml.open(path) as nvml:
        topology_file.hold_memory(path, H100, 5 * GIB)
        assert nvml.slice_memory(H100) == (5 * GIB, 81559 * MIB)
        assert nvml.sample()[0].memory_used_bytes == 5 * GIB
        topology_file.release_memory(path)
        assert nvml.slice_memory(H100)[0] == 0


def test_held_memory_is_seen_by_a_running_process(shipped) -> None:
    """What a test holds shows in a daemon that already has the topology open."""
    path = shipped("a100-mixed.toml")
    reader = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from orchestrator.gpu.nvml import Nvml
        with Nvml.open(Path({str(path)!r})) as nvml:
            for _ in sys.stdin:
                print(nvml.slice_memory({A100_3G!r})[0], flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", reader],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def used() -> int:
        proc.stdin.write("?\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return int(proc.stdout.readline())  # type: ignore[union-attr]

    try:
        assert used() == 0
        topology_file.hold_memory(path, A100_3G, 7 * GIB)
        assert used() == 7 * GIB
        topology_file.release_memory(path, A100_3G)
        assert used() == 0
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_hold_memory_rejects_unknown_uuid_and_overflow(shipped) -> None:
    path = shipped("a100-mixed.toml")
    with pytest.raises(topology_file.TopologyError, match="no GPU or MIG device has uuid MIG-nope"):
        topology_file.hold_memory(path, "MIG-nope", 1)
    with pytest.raises(ValueError, match=A100_3G):
        topology_file.hold_memory(path, A100_3G, 40193 * MIB)


def test_corrupt_memory_file_is_reported_with_its_name(shipped) -> None:
    path = shipped("a100-mixed.toml")
    topology_file.memory_file(path).write_text('{"MIG-x": "lots"}')
    with (
        Nvml.open(path) as nvml,
        pytest.raises(topology_file.TopologyError, match=r"a100-mixed\.memory\.json: must be"),
    ):
        nvml.slice_memory(A100_3G)


def test_unknown_uuid_is_unknown_device() -> None:
    with Nvml.open(TOPOLOGIES / "a100-mixed.toml") as nvml, pytest.raises(UnknownDevice):
        nvml.slice_memory("MIG-00000000-0000-0000-0000-000000000000")
    assert issubclass(UnknownDevice, LookupError)


def test_no_driver_is_nvml_unavailable_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    with pytest.raises(NvmlUnavailable) as err:
        Nvml.open(None)
    assert "NVML Shared Library Not Found" in str(err.value)
    assert "driver" in str(err.value) and "--topology" in str(err.value)


def test_missing_nvidia_ml_py_is_nvml_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NvmlUnavailable, match=r"nvidia-ml-py.*--topology"):
        Nvml.open(None)


@pytest.mark.parametrize(
    ("snippet", "field", "problem"),
    [
        (
            gpu_toml(0, "a100-80gb", mig_toml(0, 0, "3g.41gb", 1)),
            "gpu[0].mig_device[0].profile",
            "3g.40gb",
        ),
        (gpu_toml(0, "a100-80gb", "colour = 1"), "gpu[0]", "unknown key(s) colour"),
        (gpu_toml(0, "b300", ""), "gpu[0].profiles", "must be one of"),
        (
            gpu_toml(0, "a100-80gb", mig_toml(0, 7, "1g.10gb", 1)),
            "slot",
            "must be < max_mig_devices",
        ),
        (
            gpu_toml(
                0,
                "a100-80gb",
                mig_toml(0, 0, "3g.40gb", 1)
                + mig_toml(0, 1, "4g.40gb", 2)
                + mig_toml(0, 2, "1g.10gb", 3),
            ),
            "gpu[0].mig_device",
            "more than 8 memory slices",
        ),
        (
            gpu_toml(0, "a100-80gb", mig_toml(0, 0, "1g.10gb", 1) + mig_toml(0, 1, "1g.10gb", 1)),
            "gpu[0].mig_device",
            "two MIG devices have gi_id = 1",
        ),
        (
            gpu_toml(0, "a100-80gb", mig_toml(0, 0, "1g.10gb", 1), mig="disabled"),
            "mig_device",
            'only with mig = "enabled"',
        ),
        (
            gpu_toml(0, "a100-80gb", mig_toml(0, 0, "1g.10gb", 1, "memory_used_mib = 9729")),
            "memory_used_mib",
            "exceeds",
        ),
        (
            gpu_toml(0, "a100-80gb", "") + gpu_toml(0, "a100-80gb", ""),
            "gpu[1].uuid",
            "also used by gpu[0]",
        ),
        (
            gpu_toml(0, "a100-80gb", "power_w = true"),
            "gpu[0].power_w",
            "must be an integer or a number",
        ),
        (
            gpu_toml(0, "a100-80gb").replace('"NVIDIA Test GPU 0"', "3"),
            "gpu[0].name",
            "must be a string",
        ),
        ("[[gpu]\n", "", "not valid TOML"),
    ],
)
def test_bad_topology_names_file_and_field(
    tmp_path: Path, snippet: str, field: str, problem: str
) -> None:
    path = write_topology(tmp_path, snippet)
    with pytest.raises(NvmlUnavailable) as err:
        Nvml.open(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert field in message and problem in message


def test_missing_topology_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(NvmlUnavailable, match=r"nope\.toml: cannot read topology file"):
        Nvml.open(tmp_path / "nope.toml")


def test_session_is_shut_down_and_then_refuses_queries() -> None:
    fake = nvml_fake.load(TOPOLOGIES / "h100-whole.toml")
    with Nvml(fake, "test") as nvml:
        assert fake.init_count == 1
    assert fake.init_count == 0
    with pytest.raises(NvmlError, match="closed"):
        nvml.inventory()
    nvml.close()  # a second close is harmless
    assert fake.init_count == 0


def test_driver_errors_become_nvml_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = nvml_fake.load(TOPOLOGIES / "h100-whole.toml")

    def lost() -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(fake, "nvmlDeviceGetCount", lost)
    with Nvml(fake, "test") as nvml, pytest.raises(NvmlError, match="GPU is lost") as err:
        nvml.sample()
    assert not isinstance(err.value, pynvml.NVMLError)


def test_sample_on_mig_gpu_has_no_utilisation_but_telemetry() -> None:
    with Nvml.open(TOPOLOGIES / "a100-mixed.toml") as nvml:
        (s,) = nvml.sample()
    assert s.mig_enabled
    assert s.sm_util_pct is None and s.mem_util_pct is None
    assert (s.power_w, s.temperature_c, s.sm_clock_mhz, s.mem_clock_mhz) == (64.3, 31, 1410, 1593)
    assert [sl.profile for sl in s.slices] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert s.memory_total_bytes == 81920 * MIB


def test_sample_on_whole_gpu() -> None:
    with Nvml.open(TOPOLOGIES / "h100-whole.toml") as nvml:
        (s,) = nvml.sample()
    assert not s.mig_enabled
    assert (s.sm_util_pct, s.mem_util_pct, s.power_w) == (37, 12, 71.6)
    assert [(sl.uuid, sl.profile) for sl in s.slices] == [(H100, None)]


def test_sample_without_telemetry_gives_none(tmp_path: Path) -> None:
    path = write_topology(tmp_path, gpu_toml(0, "h100-80gb", mig="disabled"))
    with Nvml.open(path) as nvml:
        (s,) = nvml.sample()
    assert (s.sm_util_pct, s.power_w, s.temperature_c, s.sm_clock_mhz, s.mem_clock_mhz) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert s.memory_total_bytes == 81559 * MIB


def test_fake_is_pynvml_shaped() -> None:
    fake = nvml_fake.load(TOPOLOGIES / "h100-whole.toml")
    assert fake.NVML_DEVICE_MIG_ENABLE == pynvml.NVML_DEVICE_MIG_ENABLE
    assert fake.NVMLError_NotFound is pynvml.NVMLError_NotFound
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    with pytest.raises(AttributeError, match="does not implement nvmlDeviceGetPciInfo"):
        fake.nvmlDeviceGetPciInfo  # noqa: B018
