"""The MIG NVML fix in a Kubernetes pod: the device plugin picks the slice, so the fix finds it.

In the pod vLLM sees no CUDA_VISIBLE_DEVICES and asks NVML for GPU index 0, which is the slice's
parent GPU; the fix must find the one MIG device the container runtime exposes and arm itself.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pynvml
import pytest

from orchestrator.inengine.nvml_shim import mig_orchestrator_nvml_shim as shim
from tests.unit.test_nvml_shim import cuda_module

GIB = 1024**3
MIG_UUID = "MIG-0d1969dd-8c59-47a3-89cf-2c9ed6416ae6"
# What NVML shows inside a container given one 3g.40gb (GPU instance 2) of an A100-80GB.
POD_VIEW = f"""
[driver]
privileged = false

[[gpu]]
name = "NVIDIA A100-SXM4-80GB"
uuid = "GPU-96aa1897-0522-43e4-9ef9-413e0393bdbc"
mig = "enabled"
profiles = "a100-80gb"
memory_total_mib = 81920

[[gpu.mig_device]]
slot = 1
uuid = "{MIG_UUID}"
profile = "3g.40gb"
gi_id = 2
ci_id = 0
"""


def pod_cuda(tmp_path: Path, topology: str = POD_VIEW) -> ModuleType:
    path = tmp_path / "pod.toml"
    path.write_text(topology, encoding="utf-8")
    return cuda_module(topology=path)


@pytest.mark.parametrize("visible", [MIG_UUID, None])
def test_finds_and_fixes_the_slice_the_pod_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, visible: str | None
) -> None:
    """From NVIDIA_VISIBLE_DEVICES (the device plugin's default), else from NVML alone."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if visible is None:
        monkeypatch.delenv(shim.VISIBLE_ENV, raising=False)
    else:
        monkeypatch.setenv(shim.VISIBLE_ENV, visible)
    cuda = pod_cuda(tmp_path)
    # Unfixed, vLLM asks the parent GPU, whose memory a non-root pod may not read: start fails.
    with pytest.raises(pynvml.NVMLError_NoPermission):
        cuda.NvmlCudaPlatform.get_device_total_memory(0)
    decision = shim.apply(cuda, shim.CONTAINER_SLICE)
    assert decision.active, decision.reason
    assert MIG_UUID in decision.reason
    assert cuda.NvmlCudaPlatform.get_device_name(0) == "NVIDIA A100-SXM4-80GB MIG 3g.40gb"
    assert cuda.NvmlCudaPlatform.get_device_total_memory(0) < 40 * GIB


def test_stays_off_in_a_pod_with_a_whole_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(shim.VISIBLE_ENV, "GPU-96aa1897-0522-43e4-9ef9-413e0393bdbc")
    whole = POD_VIEW.split("[[gpu.mig_device]]")[0].replace('"enabled"', '"disabled"')
    cuda = pod_cuda(tmp_path, whole)
    nvml = cuda.pynvml
    decision = shim.apply(cuda, shim.CONTAINER_SLICE)
    assert decision == shim.Decision(False, "this container holds no single MIG device")
    assert cuda.pynvml is nvml
