"""One daemon with two real engines sharing a GPU: the set-up of the GPU tests and practicum.

`coder` (prefix caching on) and `chat` (off) share one whole GPU at 0.40 each, as in the
course. The daemon runs detached (its own session), so it outlives the command that started
it: on the GPU machine each command is one short remote call, and engine starts are the most
expensive thing there. Its handle is saved as JSON for the next command. With `cpu=True` the
same set-up runs vLLM's CPU build on a simulated whole GPU, so every step can be rehearsed here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.client import ControlClient, ControlError
from orchestrator.config.write import render_models_toml
from orchestrator.daemon import child
from orchestrator.gpu.nvml import Nvml, NvmlError
from orchestrator.tooling import cpu_venv

REPO = Path(__file__).resolve().parents[2]
API_SERVER = "vllm.entrypoints.openai.api_server"
MODELS = {"coder": True, "chat": False}  # name -> prefix caching
# The engines of one session carry this in their environment, so leftovers can be found.
SESSION_ENV = "MIG_ORCH_GPU_SESSION"
# Environment for CUDA engines, each line a device-time or log decision:
CUDA_ENV = {
    # FlashInfer's top-k/top-p sampler is JIT-compiled with nvcc at the first start (most of the
    # 137 s after graph capture on the H200); greedy and PyTorch sampling need no JIT.
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    # vLLM's tracebacks must reach the log at once, in order (the daemon reads its error line).
    "PYTHONUNBUFFERED": "1",
    "NO_COLOR": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


@dataclass
class Setup:
    """What the engines run: which vLLM, which model, on what."""

    venv: Path
    model: Path
    cpu: bool = False  # vLLM's CPU build on a simulated GPU (dry runs)
    utilization: float = 0.40
    max_model_len: int = 4096
    env: dict[str, str] = field(default_factory=dict)
    backoff_initial_s: float = 0.5  # restarts are measured: keep the daemon's own pause short
    command: list[str] | None = None  # another engine (the tests' stand-in) instead of vLLM

    def engine_command(self) -> list[str]:
        if self.command is not None:
            return list(self.command)
        return [str(cpu_venv.venv_python(self.venv.absolute())), "-m", API_SERVER]

    def engine_env(self) -> dict[str, str]:
        base = cpu_venv.cpu_engine_env() if self.cpu else dict(CUDA_ENV)
        return {**base, **self.env}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(setup: Setup, root: Path, listen: str, ports: dict[str, int]) -> str:
    """models.toml of the session (a simulated whole H100 stands in for the GPU on CPU runs)."""
    env = {**setup.engine_env(), SESSION_ENV: str(root)}
    orchestrator = {
        "listen": listen,
        "state_dir": root / "state",
        "log_dir": root / "logs",
        "engine_command": setup.engine_command(),
        "startup_timeout_s": 900,
        "stop_grace_s": 30,
        "health_interval_s": 2,
        "backoff_initial_s": setup.backoff_initial_s,
        "memory_release_timeout_s": 60,
    }
    if setup.cpu:
        orchestrator["topology"] = "h100-whole"
    defaults: dict[str, object] = {
        "max_model_len": setup.max_model_len,
        "gpu_memory_utilization": setup.utilization,
    }
    if setup.cpu:
        defaults |= {"dtype": "float32", "enforce_eager": True, "max_num_seqs": 16}
    defaults["env"] = env
    models = {
        name: {
            "model": setup.model,
            "port": ports[name],
            "host": "127.0.0.1",
            "student": name,
            "share_gpu": True,
            "enable_prefix_caching": caching,
        }
        for name, caching in MODELS.items()
    }
    return render_models_toml(orchestrator, models, defaults, "Written by " + __name__)


def gpu_memory_used_mib(topology: str | None = None) -> float | None:
    """Memory in use on every GPU together, per NVML; None without a driver."""
    try:
        with Nvml.open(Path(topology) if topology else None) as nvml:
            return sum(s.memory_used_bytes for s in nvml.sample()) / 2**20
    except NvmlError:
        return None


def session_pids(root: Path) -> list[int]:
    """Live processes started for this session (they inherit its marker)."""
    needle = f"{SESSION_ENV}={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
                if stat[0] != b"Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return sorted(found)


@dataclass
class Session:
    """A running daemon: where it listens, what it runs, what the GPU held before it."""

    root: Path
    url: str
    pid: int
    config: Path
    ports: dict[str, int]
    idle_memory_mib: float | None
    topology: str | None
    started: float

    @property
    def handle_file(self) -> Path:
        return self.root / "session.json"

    def save(self) -> None:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        self.handle_file.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Session:
        data = json.loads(path.read_text())
        return cls(
            **{**data, "root": Path(data["root"]), "config": Path(data["config"])},
        )

    def client(self, timeout: float = 30.0) -> ControlClient:
        return ControlClient(self.url, timeout=timeout)

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def engine_log(self, name: str) -> str:
        try:
            return self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        stat = Path(f"/proc/{self.pid}/stat")
        return not (stat.exists() and stat.read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z")

    def wait_ready(self, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        with self.client() as control:
            out = control.settle(names, timeout)
            for name, status in out.items():
                if status["state"] != "ready":
                    tail = "\n".join(control.logs(name, 30))
                    why = status.get("reason")
                    raise ControlError(f"{name} is {status['state']}: {why}\n{tail}")
        return out

    def stop(self, timeout: float = 120.0) -> dict[str, Any]:
        """SIGTERM the daemon; how long it took, its leftovers, and the GPU memory after."""
        before = session_pids(self.root)
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        while self.alive() and time.monotonic() - started < timeout:
            time.sleep(0.05)
        exited_s = time.monotonic() - started
        code = _reap(self.pid)
        left = session_pids(self.root)
        after = gpu_memory_used_mib(self.topology)
        return {
            "exited": not self.alive(),
            "exit_code": code,
            "exit_s": round(exited_s, 2),
            "engine_processes_before": len(before),
            "left_running": left,
            "gpu_memory_idle_mib": self.idle_memory_mib,
            "gpu_memory_after_mib": after,
        }


def _reap(pid: int) -> int | None:
    """The daemon's exit code when this process started it (else the kernel keeps it)."""
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if waited else None


def start(
    setup: Setup,
    root: Path,
    *,
    python: str = sys.executable,
    src: Path = REPO,
    wait: bool = True,
    timeout: float = 1200.0,
) -> Session:
    """Write the config, start the daemon in its own session, wait for both engines."""
    root.mkdir(parents=True, exist_ok=True)
    topology = "h100-whole" if setup.cpu else None
    idle = gpu_memory_used_mib(_topology_path(topology))
    ports = {name: free_port() for name in MODELS}
    control = free_port()
    config = root / "models.toml"
    config.write_text(config_text(setup, root, f"127.0.0.1:{control}", ports))
    proc = child.spawn(
        config,
        root / "daemon.log",
        python=python,
        args=["--log-level", "debug"],
        cwd=src,
        new_session=True,  # outlives this command: the next one reuses the engines
    )
    session = Session(
        root=root,
        url=f"http://127.0.0.1:{control}",
        pid=proc.pid,
        config=config,
        ports=ports,
        idle_memory_mib=idle,
        topology=_topology_path(topology),
        started=time.time(),
    )
    session.save()
    try:
        child.wait_until_up(proc, session.url, root / "daemon.log")
    except (child.DaemonExited, TimeoutError) as e:
        raise ControlError(str(e)) from None
    if wait:
        session.wait_ready(list(MODELS), timeout)
    return session


def _topology_path(name: str | None) -> str | None:
    if name is None:
        return None
    return str(REPO / "orchestrator" / "gpu" / "topologies" / f"{name}.toml")
