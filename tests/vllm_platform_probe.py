"""Ask vLLM's real CUDA platform code which device it sees, with the fake NVML as the driver.

Run by the engine venv's python (tests/integration/test_vllm_mig_platform.py), started with the
environment the daemon builds for the first case, so PYTHONPATH and sitecustomize act as in a real
engine. Usage: python tests/vllm_platform_probe.py CASES.json OUT_DIR, where CASES.json is a list
of {"topology": path, "env": {...}}. The expensive imports (torch, vLLM) happen once; each case
then runs in a forked child that takes that case's environment, puts the fake NVML under vLLM's
pynvml module and imports `vllm.platforms.cuda` (vLLM 0.32's own file) for the first time. Only
the compiled CUDA ops, which a CPU build lacks, are stubbed. Each child writes OUT_DIR/<i>.json
and its stderr to OUT_DIR/<i>.stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMPILED_OPS = ("vllm._C_stable_libtorch", "vllm._moe_C_stable_libtorch", "vllm._qutlass_C")


def _stub_compiled_ops() -> None:
    for name in COMPILED_OPS:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _ask(call: Any) -> Any:
    try:
        value = call()
    except Exception as e:
        return {"error": _error(e)}
    return {"value": value}


def _probe(case: dict[str, Any], nvml: types.ModuleType, fake_module: Any) -> dict[str, Any]:
    os.environ.clear()
    os.environ.update(case["env"])
    fake = fake_module.load(Path(case["topology"]))
    for name in dir(type(fake)):
        if name.startswith("nvml"):
            setattr(nvml, name, getattr(fake, name))  # the fake stands in for libnvidia-ml
    cuda = importlib.import_module("vllm.platforms.cuda")
    platform = cuda.CudaPlatform

    def capability() -> list[int] | None:
        found = platform.get_device_capability(0)
        return None if found is None else [found.major, found.minor]

    return {
        "platform": platform.__name__,
        "physical_id": _ask(lambda: platform.device_id_to_physical_device_id(0)),
        "capability": _ask(capability),
        "total_memory": _ask(lambda: platform.get_device_total_memory(0)),
        "name": _ask(lambda: platform.get_device_name(0)),
        "uuid": _ask(lambda: platform.get_device_uuid(0)),
    }


def main(cases_file: str, out_dir: str) -> int:
    cases = json.loads(Path(cases_file).read_text())
    _stub_compiled_ops()
    import vllm.third_party.pynvml as nvml  # the module vLLM 0.26-0.33 import_pynvml() returns

    # Everything vllm.platforms.cuda needs, loaded once here; the module itself is left to each
    # child, whose import is the first (and what the fix's import hook waits for).
    for name in ("torch", "vllm.envs", "vllm.logger", "vllm.platforms.interface"):
        importlib.import_module(name)
    importlib.import_module("vllm.v1.attention.backends.registry")
    # The fake raises vLLM's own NVMLError classes and builds its ctypes structs.
    sys.modules["pynvml"] = nvml
    sys.path.append(str(REPO))
    from orchestrator.gpu import nvml_fake

    for i, case in enumerate(cases):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                err = os.open(Path(out_dir, f"{i}.stderr"), os.O_WRONLY | os.O_CREAT, 0o644)
                os.dup2(err, 2)
                result = _probe(case, nvml, nvml_fake)
                Path(out_dir, f"{i}.json").write_text(json.dumps(result))
                code = 0
            except BaseException as e:
                Path(out_dir, f"{i}.json").write_text(json.dumps({"crash": _error(e)}))
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
