"""Helpers for tests marked `vllm`: a ready engine venv, the tiny model, CPU engine argv and env.

The venv and models live in the per-user cache (~/.cache/mig-orchestrator), so repeated runs and
fresh clones reuse them. When the venv cannot be made the tests skip, unless
MIG_ORCH_REQUIRE_VLLM=1 (set it in CI so a broken install fails instead of passing silently).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from orchestrator.tooling import cpu_venv

REQUIRE_ENV_VAR = "MIG_ORCH_REQUIRE_VLLM"


@functools.cache
def _ensured_venv(venv: Path) -> Path:
    # Cached per process: the health check imports vLLM (~5 s), once is enough per session.
    cpu_venv.ensure_cpu_venv(venv)
    return venv


def engine_venv() -> Path:
    """The engine venv (created on first use, reused after); skips the test if it cannot be made."""
    try:
        return _ensured_venv(cpu_venv.default_venv())
    except cpu_venv.EngineEnvError as exc:
        if os.environ.get(REQUIRE_ENV_VAR) == "1":
            pytest.fail(f"vLLM CPU engine venv unavailable ({REQUIRE_ENV_VAR}=1): {exc}")
        pytest.skip(f"vLLM CPU engine venv unavailable: {exc}")


def tiny_model(root: Path | None = None, seed: int = 0, layers: int = 2) -> Path:
    """The tiny Llama: cached under ~/.cache/mig-orchestrator/models, or built under root."""
    out = cpu_venv.default_tiny_model_dir(seed, layers)
    if root is not None:
        out = root / out.name
    if cpu_venv.tinymodel.is_built(out, seed, layers):
        return out
    return cpu_venv.build_tiny_model(engine_venv(), out, seed=seed, layers=layers)


def cpu_engine_command() -> list[str]:
    """engine_command for models.toml: the engine venv's python running vLLM's API server."""
    return cpu_venv.cpu_engine_command(engine_venv())


def cpu_engine_env() -> dict[str, str]:
    """Environment for CPU engines ([defaults] env in models.toml)."""
    return cpu_venv.cpu_engine_env()
