"""start_method.choose against vLLM's own code in the engine venv: the same answer, case by case.

vLLM decides in two places (0.32): `_maybe_force_spawn` (vllm/utils/system_utils.py), called
when the EngineCore starts, and the platform's check_and_update_config, run while the engine
config is built. The probe runs both in the engine venv's python, with fork asked for, and
prints what VLLM_WORKER_MULTIPROC_METHOD became.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.engine.start_method import choose
from tests.vllm_support import cpu_engine_command, cpu_engine_env, engine_venv, tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
LINUX = "Linux host 6.1.0 #1 SMP x86_64"
WSL = "Linux host 5.15.153.1-microsoft-standard-WSL2 #1 SMP x86_64"
# (name, extra argv, environment, uname): the rules of _maybe_force_spawn a daemon can know.
CASES = [
    ("nothing", [], {}, LINUX),
    ("numa", ["--numa-bind"], {}, LINUX),
    ("wsl", [], {}, WSL),
    ("asked-spawn", [], {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}, LINUX),
]
PROBE = """
import json, os, platform, sys
cases, model = json.loads(sys.argv[1]), sys.argv[2]
from vllm.utils import system_utils
out = {}
real_uname = platform.uname
for name, extra, env, uname in cases:
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = env.get("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    sys.argv = ["vllm", "serve", *extra]
    platform.uname = lambda u=uname: u.split()
    system_utils.in_wsl.cache_clear()  # functools.cache: it reads the uname once
    system_utils._maybe_force_spawn()
    out[name] = os.environ["VLLM_WORKER_MULTIPROC_METHOD"]
platform.uname = real_uname
sys.argv = ["vllm"]
os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"
from vllm.engine.arg_utils import EngineArgs
from vllm.platforms import current_platform
EngineArgs(model=model, max_model_len=256, dtype="float32").create_engine_config()
out["platform"] = [current_platform.device_type, os.environ["VLLM_WORKER_MULTIPROC_METHOD"]]
print("RESULT " + json.dumps(out))
"""


def _vllm_says() -> dict[str, object]:
    python = engine_venv() / "bin" / "python"
    cases = json.dumps([list(c) for c in CASES])
    done = subprocess.run(
        [str(python), "-c", PROBE, cases, str(tiny_model())],
        capture_output=True,
        text=True,
        timeout=600,
        env={**cpu_engine_env(), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def _gpu_like_command(tmp_path: Path) -> list[str]:
    """A command whose venv has an upstream (non-CPU) vllm: the platform rule stays out."""
    (tmp_path / "venv/lib/python3.11/site-packages/vllm-0.33.0.dist-info").mkdir(parents=True)
    (tmp_path / "venv/bin").mkdir()
    (tmp_path / "venv/bin/python").symlink_to(sys.executable)
    return [str(tmp_path / "venv/bin/python"), "-m", "vllm.entrypoints.openai.api_server"]


def test_the_daemon_chooses_what_vllms_own_rules_decide(tmp_path: Path) -> None:
    said = _vllm_says()
    command = _gpu_like_command(tmp_path)
    for name, extra, env, uname in CASES:
        ours = choose(None, command, [*command, *extra], env, uname)
        assert ours.method == said[name], (name, ours, said[name])
    # The CPU engine venv: vLLM's CPU platform turns the fork asked for into spawn.
    device, method = said["platform"]  # type: ignore[misc]
    assert (device, method) == ("cpu", "spawn")
    cpu = cpu_engine_command()
    ours = choose(None, cpu, cpu, {}, LINUX)
    assert ours.method == "spawn" and "CPU platform" in ours.reason
