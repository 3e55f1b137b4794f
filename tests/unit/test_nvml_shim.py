"""The MIG NVML fix inside an engine: when it patches, when it stays off, which processes get it.

A small stand-in for `vllm.platforms.cuda` takes vLLM 0.26-0.33's route from CUDA_VISIBLE_DEVICES
to an NVML handle (UUID -> nvmlDeviceGetIndex -> nvmlDeviceGetHandleByIndex), or an upstream-fixed
route (the handle straight from the UUID); the real module is tested in
tests/integration/test_vllm_mig_platform.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.config import parse_config
from orchestrator.engine.launch import build_launch
from orchestrator.engine.nvml_fix import SHIM_DIR
from orchestrator.gpu import nvml_fake, topology_file
from orchestrator.gpu.nvml import load_inventory
from orchestrator.inengine.nvml_shim import mig_orchestrator_nvml_shim as shim

REPO = Path(__file__).resolve().parents[2]
COURSE = topology_file.resolve_topology(Path("course-a100x2"))
GIB = 1024**3

# vLLM's NvmlCudaPlatform, cut down to the calls the fix decides on; `pynvml` is a module global.
PLATFORM = """
import os


def with_nvml_context(fn):
    def wrapper(*args, **kwargs):
        pynvml.nvmlInit()
        try:
            return fn(*args, **kwargs)
        finally:
            pynvml.nvmlShutdown()

    return wrapper


def _handle(device_id):
    if "CUDA_VISIBLE_DEVICES" not in os.environ:  # CUDA device i is NVML GPU index i
        return pynvml.nvmlDeviceGetHandleByIndex(device_id)
    control = os.environ["CUDA_VISIBLE_DEVICES"].split(",")[device_id]
    if FIXED:  # as upstream PR 41776 would: ask for the handle by UUID
        return pynvml.nvmlDeviceGetHandleByUUID(control)
    index = pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(control))
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class NvmlCudaPlatform:
    @classmethod
    @with_nvml_context
    def get_device_name(cls, device_id=0):
        return pynvml.nvmlDeviceGetName(_handle(device_id))

    @classmethod
    @with_nvml_context
    def get_device_total_memory(cls, device_id=0):
        return pynvml.nvmlDeviceGetMemoryInfo(_handle(device_id)).total


CudaPlatform = NvmlCudaPlatform
"""


def cuda_module(fixed: bool = False, topology: Path = COURSE) -> ModuleType:
    module = ModuleType("vllm.platforms.cuda")
    module.__dict__.update(pynvml=nvml_fake.load(topology), FIXED=fixed)
    exec(PLATFORM, module.__dict__)
    return module


def slices() -> list[tuple[str, int, str, int]]:
    """(uuid, gpu index, name, memory) of each MIG device of the course host."""
    gpus = topology_file.load_topology(COURSE).gpus
    return [
        (s.uuid, s.gpu_index, f"{gpus[s.gpu_index].name} MIG {s.profile}", s.memory_total_bytes)
        for s in load_inventory(COURSE).slices
    ]


@pytest.mark.parametrize(("uuid", "gpu", "name", "memory"), slices())
def test_patches_a_vllm_that_misreads_its_slice(
    monkeypatch: pytest.MonkeyPatch, uuid: str, gpu: int, name: str, memory: int
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuid)
    cuda = cuda_module()
    decision = shim.apply(cuda, uuid)
    assert decision.active, decision.reason
    assert f"within GPU {gpu}" in decision.reason
    assert f"{memory / GIB:.2f} GiB, capability 8.0" in decision.reason
    assert cuda.NvmlCudaPlatform.get_device_name(0) == name
    assert cuda.NvmlCudaPlatform.get_device_total_memory(0) == memory


def test_stays_off_when_vllm_already_resolves_mig_uuids(monkeypatch: pytest.MonkeyPatch) -> None:
    uuid = slices()[2][0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuid)
    cuda = cuda_module(fixed=True)
    nvml = cuda.pynvml
    decision = shim.apply(cuda, uuid)
    assert not decision.active
    assert decision.reason.startswith(f"this vLLM already resolves {uuid} to its slice")
    assert cuda.pynvml is nvml  # untouched


def test_stays_off_for_a_whole_gpu_and_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_uuid = topology_file.load_topology(COURSE).gpus[0].uuid
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpu_uuid)
    decision = shim.apply(cuda_module(), gpu_uuid)
    assert decision == shim.Decision(False, f"{gpu_uuid} is not a MIG device")
    no_nvml = cuda_module()
    no_nvml.CudaPlatform = object  # vLLM's NonNvmlCudaPlatform, chosen when nvmlInit fails
    assert "not using NVML" in shim.apply(no_nvml, slices()[0][0]).reason
    assert "no NvmlCudaPlatform" in shim.apply(ModuleType("vllm.platforms.cuda"), gpu_uuid).reason


def test_per_gpu_queries_still_reach_the_parent_gpu() -> None:
    class WithNuma(nvml_fake.FakeNvml):
        def nvmlDeviceGetNumaNodeId(self, handle: object) -> str:  # a per-GPU query
            return self.nvmlDeviceGetUUID(handle)

        def nvmlDeviceGetCpuAffinity(self, handle: object, size: int) -> tuple[str, int]:
            return self.nvmlDeviceGetUUID(handle), size

    nvml = WithNuma(topology_file.load_topology(COURSE))
    nvml.nvmlInit()
    uuid = slices()[2][0]  # GPU 1's first slice
    device = shim.find_mig_device(nvml, uuid)
    assert device is not None
    patched = shim.SliceNvml(nvml, device)
    handle = patched.nvmlDeviceGetHandleByIndex(1)
    assert patched.nvmlDeviceGetUUID(handle) == uuid
    assert patched.nvmlDeviceGetIndex(handle) == 1
    assert patched.nvmlDeviceGetNumaNodeId(handle) == device.parent_uuid
    # The set size is no handle: it must reach NVML untouched, never be asked for a UUID.
    assert patched.nvmlDeviceGetCpuAffinity(handle, 2) == (device.parent_uuid, 2)
    other = patched.nvmlDeviceGetHandleByIndex(0)
    assert patched.nvmlDeviceGetUUID(other) == topology_file.load_topology(COURSE).gpus[0].uuid


def test_index_lookup_shows_vllms_route_with_and_without_the_fix() -> None:
    nvml = nvml_fake.load(COURSE)
    nvml.nvmlInit()
    uuid, _, name, memory = slices()[3]  # GPU 1's 2g.20gb in slot 2: past the GPU count
    index, view = shim.index_lookup(nvml, uuid)
    assert index == 2
    assert view.error is not None and view.error.startswith("NVMLError_InvalidArgument")
    device = shim.find_mig_device(nvml, uuid)
    assert device is not None
    assert shim.index_lookup(shim.SliceNvml(nvml, device), uuid) == (1, shim.View(name, memory))


# ----- in real processes, launched with the environment build_launch gives the daemon -----

FAKE_CUDA = f"""
from pathlib import Path
import os
from orchestrator.gpu import nvml_fake

pynvml = nvml_fake.load(Path({str(COURSE)!r}))
FIXED = False
{PLATFORM}
"""

# One engine-like process tree: a multiprocessing "spawn" child (vLLM's EngineCore) and a
# subprocess (vLLM's model inspection), each importing vllm.platforms.cuda itself.
ENGINE = """
import json, multiprocessing, os, subprocess, sys


def report(tag):
    import vllm.platforms.cuda as cuda
    seen = [cuda.NvmlCudaPlatform.get_device_name(0), type(cuda.pynvml).__name__]
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps([tag, *seen]) + "\\n")


if __name__ == "__main__":
    report("api-server")
    multiprocessing.set_start_method("spawn")
    child = multiprocessing.Process(target=report, args=("engine-core",))
    child.start()
    child.join()
    subprocess.run([sys.executable, "-c", "import engine; engine.report('inspection')"], check=True)
"""


def _engine_env(tmp_path: Path, extra_config: str = "") -> tuple[dict[str, str], str]:
    pkg = tmp_path / "site" / "vllm" / "platforms"
    pkg.mkdir(parents=True)
    for init in (pkg.parent / "__init__.py", pkg / "__init__.py"):
        init.write_text("")
    (pkg / "cuda.py").write_text(FAKE_CUDA)
    (tmp_path / "site" / "engine.py").write_text(ENGINE)
    cfg = parse_config(f'[models.m]\nmodel = "m"\nport = 8001\n{extra_config}')
    uuid = slices()[1][0]  # GPU 0's second slice: vLLM alone would read GPU 1
    slc = next(s for s in load_inventory(COURSE).slices if s.uuid == uuid)
    base = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}",
        "OUT": str(tmp_path / "seen.jsonl"),
    }
    return build_launch(cfg, "m", slc, base_env=base).env, uuid


def _run_engine(tmp_path: Path, env: dict[str, str]) -> tuple[list[list[str]], str]:
    done = subprocess.run(
        [sys.executable, "-m", "engine"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "seen.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], done.stderr


def test_every_python_process_of_the_engine_gets_the_fix_and_it_is_logged_once(
    tmp_path: Path,
) -> None:
    env, uuid = _engine_env(tmp_path)
    seen, stderr = _run_engine(tmp_path, env)
    slice_name = "NVIDIA A100-SXM4-80GB MIG 3g.40gb"
    assert seen == [
        ["api-server", slice_name, "SliceNvml"],
        ["engine-core", slice_name, "SliceNvml"],
        ["inspection", slice_name, "SliceNvml"],
    ]
    logged = [line for line in stderr.splitlines() if "MIG NVML fix" in line]
    assert len(logged) == 1, stderr
    assert logged[0].startswith(f"[mig-orchestrator] MIG NVML fix active: vLLM resolved {uuid}")
    assert "within GPU 0" in logged[0] and "saw 'NVIDIA A100-SXM4-80GB', 80.00 GiB" in logged[0]


def test_turned_off_the_engine_reads_the_wrong_gpu(tmp_path: Path) -> None:
    env, _ = _engine_env(tmp_path, "mig_nvml_fix = false")
    seen, stderr = _run_engine(tmp_path, env)
    assert {tuple(s[1:]) for s in seen} == {("NVIDIA A100-SXM4-80GB", "FakeNvml")}
    assert "MIG NVML fix" not in stderr


def test_a_shadowed_sitecustomize_still_runs(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text(
        textwrap.dedent("""
            import os
            open(os.environ["MARK"], "w").write("ran")
        """)
    )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": f"{SHIM_DIR}{os.pathsep}{other}",
        "MARK": str(tmp_path / "mark"),
        shim.UUID_ENV: "MIG-not-used-here",
    }
    code = "import sys; print(type(sys.meta_path[0]).__name__)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "_AfterImport"  # armed, and waiting for vllm.platforms.cuda
    assert (tmp_path / "mark").read_text() == "ran"
