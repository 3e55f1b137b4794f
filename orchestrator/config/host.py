"""What only this host can tell about a valid configuration: paths, addresses, ports."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from orchestrator.config.errors import ConfigError
from orchestrator.config.gateway_checks import gateway_warnings
from orchestrator.config.settings import Config, parse_listen


def check_this_host(cfg: Config, source: str) -> None:
    """What only this host can tell: model paths exist, `host` addresses are its own."""
    errors = [
        f"models.{name}.model: {m.model} does not exist on this host"
        for name, m in cfg.models.items()
        # A path; vLLM would report a confusing hub error.
        if m.model.startswith(("/", "./", "../", "~")) and not Path(m.model).expanduser().exists()
    ]
    for name, m in cfg.models.items():
        # Without this, the engine's bind fails and the daemon reports "port already in use".
        if not _bindable(m.host):
            errors.append(f"models.{name}.host: {m.host} is not an address of this host")
    if errors:
        raise ConfigError(source, errors)


def _bindable(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError as e:
        return e.errno != errno.EADDRNOTAVAIL
    return True


def unprivileged_port_start() -> int:
    """The lowest port an unprivileged process may bind (net.ipv4.ip_unprivileged_port_start)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def config_warnings(cfg: Config, first_free_port: int = 1024) -> list[str]:
    """What is valid but likely to fail on this host; printed by check and logged by serve."""
    why = (
        f"ports below {first_free_port} need root or CAP_NET_BIND_SERVICE, which the daemon "
        "and its engines do not have (net.ipv4.ip_unprivileged_port_start)"
    )
    ports = [(f"models.{n}.port", m.port) for n, m in sorted(cfg.models.items())]
    ports.append(("orchestrator.listen", cfg.orchestrator.listen_port))
    if cfg.gateway.enabled:
        ports.append(("gateway.listen", parse_listen(cfg.gateway.listen)[1]))
    privileged = [
        f"{where}: {port} is a privileged port: {why}"
        for where, port in ports
        if port < first_free_port
    ]
    return privileged + gateway_warnings(cfg)
