"""Helpers shared by the tests of the installed mig-orchestrator.service in a container."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nspawn_harness import Container

UNIT = "mig-orchestrator.service"
CONFIG = "/etc/mig-orchestrator/models.toml"
TOKEN = "/etc/mig-orchestrator/admin.token"
METRICS_TOKEN = "/etc/mig-orchestrator/metrics.token"
TOPOLOGY = "orchestrator/gpu/topologies/a100-mixed.toml"
INSTALL = "/repo/deploy/install.sh"


@dataclass(frozen=True)
class Site:
    """The container, the control plane's port and each model's engine port."""

    container: Container
    listen_port: int
    model_ports: dict[str, int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def get(self, path: str) -> Any:
        """GET a control-plane path as admin and decode the JSON answer."""
        token = self.container.path(TOKEN).read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)


def free_ports(count: int) -> list[int]:
    """Ports free on the host: the container shares the host's network namespace."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def orchestrator_table(site: Site, engine_command: Sequence[str], *extra: str) -> list[str]:
    """The [orchestrator] lines of a test models.toml on the fake A100 topology."""
    return [
        "[orchestrator]",
        f'listen = "127.0.0.1:{site.listen_port}"',
        f"engine_command = {json.dumps(list(engine_command))}",
        f'topology = "/repo/{TOPOLOGY}"',
        f'admin_token_file = "{TOKEN}"',
        f'metrics_token_file = "{METRICS_TOKEN}"',
        *extra,
    ]


def model_table(site: Site, name: str, model: str) -> list[str]:
    return [
        "",
        f"[models.{name}]",
        f"model = {json.dumps(model)}",
        'host = "127.0.0.1"',
        f"port = {site.model_ports[name]}",
    ]


def show(container: Container, *props: str) -> dict[str, str]:
    """`systemctl show` properties of the unit."""
    out = container.run(["systemctl", "show", UNIT, "-p", ",".join(props)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def status_is(container: Container, text: str) -> bool:
    return show(container, "StatusText")["StatusText"] == text


def journal_since(container: Container, since: str) -> str:
    """The unit's journal (message text only) since a `date +@%s` timestamp."""
    argv = ["journalctl", "-u", UNIT, "--since", since, "-o", "cat", "--no-pager"]
    return container.run(argv).stdout
