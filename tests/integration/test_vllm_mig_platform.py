"""vLLM's own CUDA platform code on every MIG slice of the course topologies, with and without fix.

The fake NVML (which answers MIG handles as nvml.h documents) stands in for the driver; each engine
environment is the one build_launch gives the daemon (engine python from engine_command, env,
PYTHONPATH), see tests/vllm_platform_probe.py. Without the fix vLLM reads the wrong device, as
issue 10 reports; with it capability, NVML index and total memory are the slice's.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import parse_config
from orchestrator.engine.launch import build_launch
from orchestrator.gpu.inventory import Slice
from orchestrator.gpu.nvml import load_inventory
from orchestrator.gpu.topology_file import load_topology, resolve_topology
from orchestrator.inengine.nvml_shim.mig_orchestrator_nvml_shim import UUID_ENV
from tests.vllm_support import cpu_engine_command, cpu_engine_env

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROBE = Path(__file__).resolve().parents[1] / "vllm_platform_probe.py"
MIG_TOPOLOGIES = ("a100-mixed", "course-a100x2", "h200-3g71")
PER_SLICE_ENV = {"CUDA_VISIBLE_DEVICES", UUID_ENV}  # all else is the same for every slice
GIB = 1024**3


@dataclass(frozen=True)
class Case:
    topology: str
    slice: Slice

    @property
    def id(self) -> str:
        s = self.slice
        return f"{self.topology}:GPU{s.gpu_index}:" + (
            f"{s.profile}:gi{s.gi_id}" if s.is_mig else "whole"
        )


def _cases(names: tuple[str, ...]) -> list[Case]:
    return [
        Case(name, s) for name in names for s in load_inventory(resolve_topology(Path(name))).slices
    ]


MIG_CASES = _cases(MIG_TOPOLOGIES)
WHOLE_GPU = _cases(("h100-whole",))


def _env(case: Case, fix: bool) -> dict[str, str]:
    lines = [
        "[orchestrator]",
        f"engine_command = {json.dumps(cpu_engine_command())}",
        "[defaults]",
        f"env = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in cpu_engine_env().items())} }}",
        "" if fix else "mig_nvml_fix = false",
        '[models.m]\nmodel = "/models/m"\nport = 8001',
    ]
    cfg = parse_config("\n".join(lines))
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    launch = build_launch(cfg, "m", case.slice, base_env=base)
    return launch.env


def _run(cases: list[Case], fix: bool, out: Path) -> list[dict[str, Any]]:
    envs = [_env(c, fix) for c in cases]
    first = envs[0]
    for env in envs:  # one process serves every case only because this holds
        differ = {k for k in env.keys() | first.keys() if env.get(k) != first.get(k)}
        assert differ <= PER_SLICE_ENV, differ
    out.mkdir()
    spec = out / "cases.json"
    spec.write_text(
        json.dumps(
            [
                {"topology": str(resolve_topology(Path(c.topology))), "env": e}
                for c, e in zip(cases, envs, strict=True)
            ]
        )
    )
    python = cpu_engine_command()[0]
    done = subprocess.run(
        [python, str(PROBE), str(spec), str(out)], env=first, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    results = []
    for i in range(len(cases)):
        result = json.loads((out / f"{i}.json").read_text())
        assert "crash" not in result, result
        result["stderr"] = (out / f"{i}.stderr").read_text()
        results.append(result)
    return results


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, bool], Any]]:
    root = tmp_path_factory.mktemp("platform")
    without = _run(MIG_CASES + WHOLE_GPU, False, root / "without")
    with_fix = _run(MIG_CASES, True, root / "with")
    table = {(c.id, False): r for c, r in zip(MIG_CASES + WHOLE_GPU, without, strict=True)}
    table.update({(c.id, True): r for c, r in zip(MIG_CASES, with_fix, strict=True)})
    _print_table(table)
    yield table


def _print_table(table: dict[tuple[str, bool], Any]) -> None:
    print("\nslice | fix | physical id | capability | total memory | name")
    for (case_id, fix), r in sorted(table.items()):
        cells = [r[k].get("value", r[k].get("error")) for k in ("physical_id", "capability")]
        total = r["total_memory"].get("value")
        size = f"{total / GIB:.2f} GiB" if total is not None else r["total_memory"]["error"]
        name = r["name"].get("value", r["name"].get("error"))
        print(f"{case_id} | {'on' if fix else 'off'} | {cells[0]} | {cells[1]} | {size} | {name}")


def _topology_gpus(case: Case) -> Any:
    return load_topology(resolve_topology(Path(case.topology))).gpus


@pytest.mark.parametrize("case", MIG_CASES, ids=lambda c: c.id)
def test_with_the_fix_vllm_sees_its_slice(seen: dict[tuple[str, bool], Any], case: Case) -> None:
    r = seen[(case.id, True)]
    gpu = _topology_gpus(case)[case.slice.gpu_index]
    assert r["platform"] == "NvmlCudaPlatform"
    assert r["physical_id"] == {"value": case.slice.gpu_index}
    assert r["capability"] == {"value": list(gpu.compute_capability)}
    assert r["total_memory"] == {"value": case.slice.memory_total_bytes}
    assert r["name"] == {"value": f"{gpu.name} MIG {case.slice.profile}"}
    assert r["uuid"] == {"value": case.slice.uuid}
    assert "[mig-orchestrator] MIG NVML fix active" in r["stderr"]
    assert f"within GPU {case.slice.gpu_index}" in r["stderr"]


@pytest.mark.parametrize("case", MIG_CASES, ids=lambda c: c.id)
def test_without_the_fix_vllm_reads_the_wrong_device(
    seen: dict[tuple[str, bool], Any], case: Case
) -> None:
    """Issue 10's table: vLLM takes the MIG device's index within its parent for a GPU index."""
    r = seen[(case.id, False)]
    gpus = _topology_gpus(case)
    slot = next(m.slot for m in gpus[case.slice.gpu_index].mig_devices if m.uuid == case.slice.uuid)
    assert r["physical_id"] == {"value": slot}
    if slot < len(gpus):  # a GPU index that exists: that whole GPU, maybe another one
        assert r["total_memory"] == {"value": gpus[slot].memory_total_bytes}
        assert r["name"] == {"value": gpus[slot].name}
    else:  # past the GPU count: NVMLError, which get_device_capability does not catch
        assert r["capability"]["error"].startswith("NVMLError_InvalidArgument")
        assert r["total_memory"]["error"].startswith("NVMLError_InvalidArgument")
    assert "MIG NVML fix" not in r["stderr"]


def test_the_issue_rows(seen: dict[tuple[str, bool], Any]) -> None:
    mixed = [c for c in MIG_CASES if c.topology == "a100-mixed"]
    first = seen[(mixed[0].id, False)]
    assert first["total_memory"] == {"value": 80 * GIB}  # a 40 GB slice read as the whole GPU
    assert all("error" in seen[(c.id, False)]["capability"] for c in mixed[1:])  # engine dies
    course = {c.slice.uuid: c for c in MIG_CASES if c.topology == "course-a100x2"}
    gpus = load_topology(resolve_topology(Path("course-a100x2"))).gpus
    second_on_gpu0 = course[gpus[0].mig_devices[1].uuid]
    first_on_gpu1 = course[gpus[1].mig_devices[0].uuid]
    assert seen[(second_on_gpu0.id, False)]["physical_id"] == {"value": 1}  # GPU 1: wrong GPU
    assert seen[(first_on_gpu1.id, False)]["physical_id"] == {"value": 0}  # GPU 0: wrong GPU


@pytest.mark.parametrize("case", WHOLE_GPU, ids=lambda c: c.id)
def test_a_whole_gpu_needs_no_fix(seen: dict[tuple[str, bool], Any], case: Case) -> None:
    r = seen[(case.id, False)]
    assert r["physical_id"] == {"value": case.slice.gpu_index}
    assert r["total_memory"] == {"value": case.slice.memory_total_bytes}
    assert _env(case, True) == _env(case, False)  # the daemon arms nothing for it
