"""Arize Phoenix as the OTLP receiver of the tracing tests: started on loopback ports, its
data in a temporary directory, telemetry of its own off; spans read back by its REST API."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.tooling.cpu_venv import cache_root
from tests.daemon_harness import free_ports

# Installed apart (about 0.9 GB with its dependencies): `python3 -m venv
# ~/.cache/mig-orchestrator/phoenix-venv && ~/.cache/mig-orchestrator/phoenix-venv/bin/pip
# install arize-phoenix`; or name another venv with PHOENIX_VENV.
VENV_ENV = "PHOENIX_VENV"


def phoenix_bin() -> Path:
    venv = Path(os.environ.get(VENV_ENV) or cache_root() / "phoenix-venv")
    exe = venv / "bin" / "phoenix"
    if not exe.exists():
        pytest.skip(f"Arize Phoenix is not installed at {venv} (pip install arize-phoenix)")
    return exe


class Phoenix:
    def __init__(self, url: str) -> None:
        self.url = url
        self.traces_endpoint = f"{url}/v1/traces"  # OTLP/HTTP

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.url}/v1/projects/default/spans",
            params={"trace_id": trace_id, "limit": 100},
            timeout=10,
        )
        if r.status_code == 404:  # no span in the project yet
            return []
        r.raise_for_status()
        data: list[dict[str, Any]] = r.json()["data"]
        return data


@contextmanager
def phoenix(tmp: Path, timeout_s: float = 180) -> Iterator[Phoenix]:
    http_port, grpc_port = free_ports(2)
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(http_port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_WORKING_DIR": str(tmp / "phoenix"),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = (tmp / "phoenix.log").open("wb")
    proc = subprocess.Popen([str(phoenix_bin()), "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, (tmp / "phoenix.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Phoenix did not start"
            time.sleep(0.5)
        yield Phoenix(url)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
