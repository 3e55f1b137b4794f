"""Run the real daemon as a subprocess on a simulated topology, and look at what it started."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from orchestrator.config.write import render_models_toml
from orchestrator.daemon import child

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "tests" / "standin_engine.py"
TOPOLOGIES = REPO / "orchestrator" / "gpu" / "topologies"
# Every engine of a test daemon inherits this, so leftovers can be found by their environment.
SESSION_MARKER = "MIG_ORCH_TEST_ROOT"


def write_secret(path: Path, text: str) -> Path:
    """A token or key file as the daemon accepts it: readable by its owner only."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def standin_model(port: int, **kw: Any) -> dict[str, Any]:
    """A [models.NAME] table for a stand-in engine on 127.0.0.1:port."""
    env = kw.pop("env", {})
    return {"model": "stand-in", "port": port, "host": "127.0.0.1", "env": env, **kw}


def events(path: Path) -> list[dict[str, Any]]:
    """The events a stand-in wrote to its STANDIN_STATE_FILE."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _live(field: str) -> Iterator[tuple[int, bytes, list[bytes]]]:
    """(pid, contents of /proc/PID/<field>, stat fields after the name) of non-zombie processes."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry.name}/{field}").read_bytes()
            stat = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if stat[0] != b"Z":
            yield int(entry.name), data, stat


def engine_pids(served_name: str) -> list[int]:
    """Live stand-in (or vLLM) processes serving `served_name`, found from their command lines."""
    found = []
    for pid, cmdline, _ in _live("cmdline"):
        argv = cmdline.split(b"\0")
        if b"--served-model-name" in argv:
            i = argv.index(b"--served-model-name")
            if i + 1 < len(argv) and argv[i + 1].decode() == served_name:
                found.append(pid)
    return sorted(found)


def group_pids(pgid: int) -> list[int]:
    return [pid for pid, _, stat in _live("stat") if int(stat[2]) == pgid]


def wait_until(pred: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Daemon:
    """One daemon subprocess with its own config, state and log directories."""

    root: Path
    models: dict[str, dict[str, Any]]
    orchestrator: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    topology: Path = TOPOLOGIES / "a100-mixed.toml"
    token: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    config_text: str | None = None  # a complete models.toml instead of one rendered from fields
    env: dict[str, str] = field(default_factory=dict)  # added to the daemon's environment
    nofile: int | None = None  # the daemon's open-file limit, soft and hard, as `ulimit -n N`
    cwd: Path = REPO  # where the daemon is started (`serve` by hand: wherever the admin is)
    wrapper: list[str] = field(default_factory=list)  # argv before python, e.g. setpriv's

    def __post_init__(self) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.root / "models.toml"
        self.log_path = self.root / "daemon.log"
        # A private copy: tests hold slice memory through a sidecar file next to the topology.
        copy = self.root / self.topology.name
        copy.write_text(self.topology.read_text())
        self.topology = copy
        self.write_config()

    def write_config(self) -> None:
        if self.config_text is not None:
            self.config_path.write_text(self.config_text)
            return
        orch = {
            "listen": f"127.0.0.1:{self.port}",
            "state_dir": str(self.root / "state"),
            "log_dir": str(self.root / "logs"),
            "topology": str(self.topology),
            "engine_command": [sys.executable, str(STANDIN)],
            "health_interval_s": 0.5,
            "health_timeout_s": 0.5,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 1.0,
            "stop_grace_s": 2.0,
            "memory_release_timeout_s": 20.0,
            # Tests find engines by --served-model-name in their command line, which an engine
            # started from a standby does not show (its argv came through the channel): the
            # standby tests turn it on.
            "standby": False,
            **self.orchestrator,
        }
        # Engines inherit the marker, so teardown finds exactly this daemon's leftovers.
        defaults = {
            **self.defaults,
            "env": {SESSION_MARKER: str(self.root), **self.defaults.get("env", {})},
        }
        self.config_path.write_text(render_models_toml(orch, self.models, defaults))

    def start(self, wait_ready: Iterable[str] = (), timeout: float = 20) -> Daemon:
        limit = self.nofile
        self.proc = child.spawn(
            self.config_path,
            self.log_path,
            args=["--log-level", "debug", *self.extra_args],
            env=self.env,
            cwd=self.cwd,
            wrapper=self.wrapper,
            preexec_fn=None
            if limit is None
            else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )
        try:
            child.wait_until_up(self.proc, self.url, self.log_path, timeout)
        except child.DaemonExited as e:
            raise AssertionError(f"{e}\n{self.log()}") from None
        for name in wait_ready:
            self.wait_state(name, "ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self, token: str | None = None) -> dict[str, str]:
        t = token or self.token
        return {"Authorization": f"Bearer {t}"} if t else {}

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.headers(token), timeout=10)

    def post(self, path: str, json: Any = None, token: str | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=json, headers=self.headers(token), timeout=10)

    def status(self, name: str) -> dict[str, Any]:
        r = self.get(f"/api/v1/models/{name}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_state(self, name: str, *states: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            s = self.status(name)
            return s if s["state"] in states else None

        try:
            return dict(wait_until(reached, timeout, f"{name} to be {'/'.join(states)}"))
        except AssertionError:
            lines = self.get(f"/api/v1/models/{name}/logs?tail=40").json().get("lines", [])
            engine_log = "\n".join(lines)
            raise AssertionError(
                f"{self.status(name)}\n--- {name} log ---\n{engine_log}"
                f"\n--- daemon log ---\n{self.log()[-4000:]}"
            ) from None

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def gateway_serves(url: str, model: str, key: str | None = None) -> bool:
    """Whether the gateway at url answers a one-token completion of model. Listing it is not
    enough: the gateway's table, read every refresh_s, may still say its engine is starting."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "prompt": "x", "max_tokens": 1}
    try:
        r = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=30)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def cpu_vllm_daemon(
    root: Path,
    venv: Path,
    models: list[tuple[str, str, int, str, bool, Path]],
    orchestrator: Mapping[str, Any] | None = None,
    extra_models: Mapping[str, Mapping[str, Any]] | None = None,
) -> Daemon:
    """A daemon (not yet started) whose models are real vLLM CPU engines on a100-mixed."""
    from orchestrator.tooling.demo import cpu_config_text

    control = free_ports(1)[0]
    topology = root / "a100-mixed.toml"
    topology.write_text((TOPOLOGIES / "a100-mixed.toml").read_text())
    text = cpu_config_text(
        workdir=root,
        topology=topology,
        venv=venv,
        models=models,
        listen=f"127.0.0.1:{control}",
        orchestrator=orchestrator,
        env={SESSION_MARKER: str(root)},
    )
    if extra_models:
        text += "\n" + render_models_toml(None, extra_models)
    d = Daemon(root, {}, topology=topology, config_text=text)
    d.port, d.url = control, f"http://127.0.0.1:{control}"
    return d


def stop_leaving_nothing(d: Daemon, root: Path) -> None:
    """SIGTERM the daemon of real engines; no engine process and nothing it started may remain."""
    groups = [m["pid"] for m in d.get("/api/v1/models").json() if m["pid"]]
    assert d.terminate(timeout=120) == 0
    for pgid in groups:
        assert group_pids(pgid) == [], "a vLLM process outlived the daemon"
    assert marked_pids(root) == [], "a process the daemon started is still running"


def marked_pids(root: Path) -> list[int]:
    """Live processes whose environment carries this test root's marker (engines and children)."""
    needle = f"{SESSION_MARKER}={root}".encode()
    return [pid for pid, environ, _ in _live("environ") if needle in environ.split(b"\0")]
