"""deploy/install.sh --vllm-bundle: the daemon installed offline from a bundle, under systemd.

The bundle is built here, with pip, for the container's own Python and its `pip freeze`; inside
the container the install runs with every proxy pointing nowhere, so a single download would
fail it. Then the installed unit starts a stand-in engine: the layered venv runs the daemon.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn_harness import REPO, Container, wait_for
from service_support import (
    INSTALL,
    UNIT,
    Site,
    free_ports,
    model_table,
    orchestrator_table,
    show,
    status_is,
)

from orchestrator.cli import engine as engine_cli

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

STANDIN = "/repo/tests/standin_engine.py"
# Anything that tries the network during the install fails fast instead.
NO_NETWORK = {
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
}


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundle-shelf")


@pytest.fixture(scope="module")
def booted(rootfs: Path, shelf: Path) -> Iterator[Container]:
    with Container(rootfs, binds_ro={str(REPO): "/repo", str(shelf): "/bundle"}) as c:
        yield c


@pytest.fixture(scope="module")
def built(booted: Container, shelf: Path) -> Path:
    """A daemon-only bundle for the container's Python, from its own package list."""
    probe = booted.run(
        [
            "python3",
            "-c",
            "import platform, sys; print(platform.python_version(), platform.libc_ver()[1])",
        ]
    ).stdout.split()
    python, glibc = probe[0], probe[1]
    freeze = booted.run(["python3", "-m", "pip", "list", "--format=freeze"]).stdout
    target = shelf.parent / "container-packages.txt"
    target.write_text(freeze)
    code = engine_cli.main(
        [
            "bundle",
            "--out",
            str(shelf),
            "--target-packages",
            str(target),
            "--python-version",
            python,
            "--platform",
            f"manylinux_2_{glibc.split('.')[1]}_x86_64",
            "--no-engine",
            "--part-size",
            "3M",
        ]
    )
    assert code == 0
    return shelf


def test_install_from_the_bundle_needs_no_index_and_the_unit_serves(
    booted: Container, built: Path
) -> None:
    manifest = json.loads((built / "bundle.json").read_text())
    assert list(manifest["environments"]) == ["daemon"]
    assert len(manifest["archive"]["parts"]) > 1
    listen, port = free_ports(2)
    site = Site(booted, listen, {"alice": port})
    config = orchestrator_table(site, ["/usr/bin/python3", STANDIN])
    config += model_table(site, "alice", "standin/alice")
    booted.path("/root/models.toml").write_text("\n".join(config) + "\n")

    argv = [
        INSTALL,
        "--source",
        "/repo",
        "--vllm-bundle",
        "/bundle",
        "--python",
        "/usr/bin/python3",
        "--config",
        "/root/models.toml",
    ]
    done = booted.run(argv, env=NO_NETWORK, timeout=600)
    assert "installing the daemon and vLLM from the bundle" in done.stderr
    venv = "/opt/mig-orchestrator/venv"
    layer = booted.sh(f"cat {venv}/lib/python3*/site-packages/_mig_orchestrator_base.pth").stdout
    assert re.search(r"site\.addsitedir\('/usr/lib/python3/dist-packages'\)", layer), layer
    assert not booted.path("/opt/mig-orchestrator/vllm-venv").exists()  # no engine in it

    # Type=notify: the restart returned once the daemon from the bundle sent READY=1.
    assert show(booted, "ActiveState")["ActiveState"] == "active"
    wait_for(lambda: status_is(booted, "1/1 models ready"), 60, 'StatusText "1/1 models ready"')
    health = site.get("/healthz")
    assert (health["models"], health["ready"]) == (1, 1)

    again = booted.run(argv, env=NO_NETWORK, timeout=300)
    assert "already has this bundle" in again.stderr
    booted.run(["systemctl", "stop", UNIT], timeout=120)
