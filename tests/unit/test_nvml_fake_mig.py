"""The fake NVML answers MIG handles the way the NVML reference documents (see nvml_fake)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest

from orchestrator.gpu import nvml_fake, topology_file
from orchestrator.gpu.nvml_fake import FakeNvml

GIB = 1024**3


@pytest.fixture
def course() -> Iterator[FakeNvml]:
    """The course host: GPU0 3g.40gb (slot 0) + 3g.40gb (slot 1); GPU1 3g.40gb (0) + 2g.20gb (2)."""
    fake = nvml_fake.load(Path("course-a100x2"))
    fake.nvmlInit()
    yield fake
    fake.nvmlShutdown()


def test_mig_uuid_gives_a_mig_handle_in_both_uuid_forms(course: FakeNvml) -> None:
    gpu1 = course.topology.gpus[1]
    mig = gpu1.mig_devices[1]
    for uuid in (mig.uuid, f"MIG-{gpu1.uuid}/{mig.gi_id}/{mig.ci_id}"):
        handle = course.nvmlDeviceGetHandleByUUID(uuid)
        assert bool(course.nvmlDeviceIsMigDeviceHandle(handle))
        assert course.nvmlDeviceGetUUID(handle) == mig.uuid  # canonical form back
    with pytest.raises(pynvml.NVMLError_NotFound):
        course.nvmlDeviceGetHandleByUUID("MIG-00000000-0000-0000-0000-000000000000")


def test_index_of_a_mig_handle_is_its_slot_within_the_parent(course: FakeNvml) -> None:
    gpu1 = course.nvmlDeviceGetHandleByIndex(1)
    mig = course.nvmlDeviceGetHandleByUUID(course.topology.gpus[1].mig_devices[1].uuid)
    assert course.nvmlDeviceGetIndex(mig) == 2  # slot 2 of GPU 1, not GPU index 1
    assert course.nvmlDeviceGetIndex(gpu1) == 1
    # "returns indices that can be passed to nvmlDeviceGetMigDeviceHandleByIndex to retrieve an
    # identical handle"
    same = course.nvmlDeviceGetMigDeviceHandleByIndex(gpu1, course.nvmlDeviceGetIndex(mig))
    assert same is mig


def test_parent_of_a_mig_handle(course: FakeNvml) -> None:
    mig = course.nvmlDeviceGetHandleByUUID(course.topology.gpus[1].mig_devices[0].uuid)
    parent = course.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert course.nvmlDeviceGetIndex(parent) == 1
    assert not course.nvmlDeviceIsMigDeviceHandle(parent)
    with pytest.raises(pynvml.NVMLError):
        course.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(parent)


def test_mig_handle_answers_for_its_slice(course: FakeNvml) -> None:
    mig = course.nvmlDeviceGetHandleByUUID(course.topology.gpus[1].mig_devices[1].uuid)
    assert course.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-80GB MIG 2g.20gb"
    assert course.nvmlDeviceGetMemoryInfo(mig).total == 19968 * 1024**2
    assert course.nvmlDeviceGetCudaComputeCapability(mig) == (8, 0)
    gpu = course.nvmlDeviceGetHandleByIndex(1)
    assert course.nvmlDeviceGetName(gpu) == "NVIDIA A100-SXM4-80GB"
    assert course.nvmlDeviceGetMemoryInfo(gpu).total == 80 * GIB


def test_index_past_the_gpu_count_is_invalid_argument_not_a_runtime_error(
    course: FakeNvml,
) -> None:
    # vLLM's get_device_capability catches only RuntimeError: this must get past it.
    with pytest.raises(pynvml.NVMLError_InvalidArgument) as caught:
        course.nvmlDeviceGetHandleByIndex(course.nvmlDeviceGetCount())
    assert not isinstance(caught.value, RuntimeError)


def test_h200_capability_and_slice_memory() -> None:
    fake = nvml_fake.load(Path("h200-3g71"))
    fake.nvmlInit()
    mig = fake.nvmlDeviceGetHandleByUUID(fake.topology.gpus[0].mig_devices[1].uuid)
    assert fake.nvmlDeviceGetCudaComputeCapability(mig) == (9, 0)
    assert fake.nvmlDeviceGetName(mig) == "NVIDIA H200 MIG 3g.71gb"
    assert fake.nvmlDeviceGetMemoryInfo(mig).total == 68096 * 1024**2


def _one_gpu(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(
        '[[gpu]]\nname = "NVIDIA L4"\nuuid = "GPU-1"\nmig = "unsupported"\n'
        f"memory_total_mib = 23034\n{extra}\n"
    )
    return path


def test_capability_comes_from_the_topology_or_is_not_guessed(tmp_path: Path) -> None:
    fake = nvml_fake.load(_one_gpu(tmp_path, 'compute_capability = "8.9"'))
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCudaComputeCapability(fake.nvmlDeviceGetHandleByIndex(0)) == (8, 9)
    bare = nvml_fake.load(_one_gpu(tmp_path, ""))
    bare.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        bare.nvmlDeviceGetCudaComputeCapability(bare.nvmlDeviceGetHandleByIndex(0))


def test_bad_capability_names_file_and_field(tmp_path: Path) -> None:
    path = _one_gpu(tmp_path, 'compute_capability = "sm_89"')
    with pytest.raises(topology_file.TopologyError, match=r"t\.toml: gpu\[0\]\.compute_capability"):
        nvml_fake.load(path)
