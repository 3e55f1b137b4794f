"""[gateway] in models.toml: off by default, unique served names while on, loopback-only engines,
and a warning for engines still reachable around it."""

from __future__ import annotations

import pytest

from orchestrator.config import ConfigError, config_warnings, parse_config
from orchestrator.daemon.gateway_keeper import gateway_launch
from orchestrator.engine.launch import build_launch

TWO = """
[models.alice]
model = "/m"
port = 8001
served_model_name = "llama"

[models.bob]
model = "/m"
port = 8002
"""
ON = '\n[gateway]\nenabled = true\nlisten = "0.0.0.0:9000"\n'


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.errors


def test_off_by_default_and_engines_keep_their_address() -> None:
    cfg = parse_config(TWO)
    assert not cfg.gateway.enabled and cfg.gateway.listen == "0.0.0.0:8701"
    assert cfg.engine_host("alice") == "0.0.0.0"
    assert config_warnings(cfg) == []


def test_duplicate_served_name_refused_only_while_on() -> None:
    dup = TWO.replace("port = 8002\n", 'port = 8002\nserved_model_name = "llama"\n')
    parse_config(dup)  # each engine has its own port: no clash without the gateway
    (error,) = _errors(dup + ON)
    assert error.startswith("models.bob.served_model_name: 'llama' is also served by models.alice")
    # A model's table name is its served name when none is set.
    (error,) = _errors(TWO.replace('"llama"', '"bob"') + ON)
    assert "models.bob.served_model_name: 'bob' is also served by models.alice" in error


def test_gateway_port_clashes() -> None:
    errors = _errors(TWO + ON.replace("9000", "8002"))
    assert errors == ["gateway.listen: port 8002 is also models.bob.port"]
    errors = _errors(TWO + ON.replace("0.0.0.0:9000", "127.0.0.1:8700"))
    assert errors == ["gateway.listen: port 8700 is the control plane's (orchestrator.listen)"]


def test_unknown_gateway_setting_suggests() -> None:
    (error,) = _errors(TWO + "\n[gateway]\nenable = true\n")
    assert error == "gateway.enable: unknown setting (did you mean 'enabled'?)"


def test_gateway_only_binds_loopback_and_silences_the_warning() -> None:
    cfg = parse_config(TWO + ON)
    warnings = config_warnings(cfg)
    assert [w.split(":")[0] for w in warnings] == ["models.alice", "models.bob"]
    assert "reachable directly on 0.0.0.0:8001, around the gateway" in warnings[0]
    text = TWO.replace("port = 8001\n", "port = 8001\ngateway_only = true\n") + ON
    cfg = parse_config(text)
    assert cfg.engine_host("alice") == "127.0.0.1" and cfg.engine_host("bob") == "0.0.0.0"
    argv = build_launch(cfg, "alice", None, read_secrets=False).argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert [w.split(":")[0] for w in config_warnings(cfg)] == ["models.bob"]
    everyone = parse_config(TWO + ON + "gateway_only = true\n")
    assert config_warnings(everyone) == []
    assert {everyone.engine_host(n) for n in ("alice", "bob")} == {"127.0.0.1"}


def test_gateway_only_without_a_gateway_or_with_a_public_host_is_refused() -> None:
    text = TWO.replace("port = 8001\n", "port = 8001\ngateway_only = true\n")
    (error,) = _errors(text)
    assert error.startswith("models.alice.gateway_only: the engine would listen on 127.0.0.1")
    (error,) = _errors(TWO + "\n[gateway]\ngateway_only = true\n")
    assert error.startswith("gateway.gateway_only:")
    public = text.replace("port = 8001\n", 'port = 8001\nhost = "0.0.0.0"\n') + ON
    (error,) = _errors(public)
    assert error.startswith("models.alice.host: 0.0.0.0 contradicts gateway_only")


def test_launch_reads_engine_states_from_the_control_plane() -> None:
    cfg = parse_config(TWO + ON + "max_body_bytes = 4096\n")
    launch = gateway_launch(cfg)
    argv = launch.argv
    assert argv[1:3] == ["-m", "orchestrator.gateway"]
    assert argv[argv.index("--control") + 1] == "http://127.0.0.1:8700"
    assert argv[argv.index("--max-body-bytes") + 1] == "4096"
    assert launch.url == "http://127.0.0.1:9000"  # a wildcard listen is checked on loopback
