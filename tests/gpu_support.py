"""Helpers for tests/gpu: which vLLM, which model, and whether this is a CPU rehearsal.

One daemon with two real CUDA vLLM engines serves all of tests/gpu/test_cuda_vllm.py.

Engine starts cost a minute each on an H200, so the tests share one daemon, reuse its engines
and run in file order, the last one stopping it. conftest.py starts the daemon, or ADOPTS the one
of the practicum's `up` phase (MIG_ORCH_GPU_SESSION_FILE=<results>/session/session.json), which
saves both starts. Environment:
    MIG_ORCH_CUDA_VENV   the CUDA vLLM environment (deploy/install.sh --vllm-bundle makes one)
    MIG_ORCH_GPU_MODEL   a model folder (default: the llama-1b shape, built with that venv)
    MIG_ORCH_GPU_REHEARSAL=cpu  run the same steps with vLLM's CPU build on a simulated GPU,
                         skipping what only a GPU can show (to find mistakes before GPU time)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orchestrator.gpu.nvml import Nvml, NvmlError
from orchestrator.practicum.session import Setup
from orchestrator.tooling import cpu_venv

REHEARSAL = os.environ.get("MIG_ORCH_GPU_REHEARSAL") == "cpu"
# Asks the engine's Python for a CUDA torch without importing vLLM (26 s on an H200).
_CUDA_PROBE = (
    "import importlib.metadata as m, importlib.util as u, sys, torch\n"
    "assert u.find_spec('vllm'), 'vllm is not installed'\n"
    "assert torch.version.cuda, f'torch {torch.__version__} is not a CUDA build'\n"
    "print(m.version('vllm'))"
)


def _cuda_venv() -> Path:
    configured = os.environ.get("MIG_ORCH_CUDA_VENV")
    if not configured:
        pytest.skip("set MIG_ORCH_CUDA_VENV to a CUDA vLLM environment to run the GPU tests")
    venv = Path(configured)
    probe = subprocess.run(
        [str(cpu_venv.venv_python(venv)), "-c", _CUDA_PROBE],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"no CUDA vLLM in {venv}: {last}")
    return venv


def _model(venv: Path, shape: str) -> Path:
    configured = os.environ.get("MIG_ORCH_GPU_MODEL")
    if configured:
        return Path(configured)
    layers = cpu_venv.tinymodel.SHAPES[shape].layers
    out = cpu_venv.default_tiny_model_dir(layers=layers, shape=shape)
    return cpu_venv.build_tiny_model(venv, out, layers=layers, shape=shape)


def setup() -> Setup:
    if REHEARSAL:
        venv = cpu_venv.ensure_cpu_venv(cpu_venv.default_venv()).parent.parent
        return Setup(venv=venv, model=_model(venv, "tiny"), cpu=True, max_model_len=2048)
    try:
        Nvml.open(None).close()
    except NvmlError as exc:
        pytest.skip(f"no NVIDIA driver here: {exc}")
    venv = _cuda_venv()
    return Setup(venv=venv, model=_model(venv, "llama-1b"))
