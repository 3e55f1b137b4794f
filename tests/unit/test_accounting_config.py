"""[gateway] keys: off by default; when on, the daemon starts the gateway with the config."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import parse_config
from orchestrator.daemon.gateway_keeper import gateway_launch

MODEL = '[models.a]\nmodel = "m"\nport = 18001\nhost = "127.0.0.1"\nstudent = "Alice"\n'


def test_a_gateway_with_keys_is_started_with_the_config() -> None:
    assert not parse_config(MODEL).gateway.keys
    cfg = parse_config(f"[gateway]\nenabled = true\nkeys = true\n{MODEL}")
    argv = gateway_launch(cfg, Path("/etc/mig-orchestrator/models.toml")).argv
    assert argv[argv.index("--keys-config") + 1] == "/etc/mig-orchestrator/models.toml"
    open_cfg = parse_config(f"[gateway]\nenabled = true\n{MODEL}")
    assert "--keys-config" not in gateway_launch(open_cfg, Path("x")).argv
