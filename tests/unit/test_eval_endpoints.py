"""Model specs: daemon models by served_model_name (directly or through the gateway), and URLs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from orchestrator.evaluation.endpoints import (
    Endpoint,
    SpecError,
    Unavailable,
    from_daemon,
    parse_spec,
)

STATUSES = [
    {"name": "student-a", "served_model_name": "coder", "state": "ready",
     "endpoint": "http://10.0.0.1:8001/v1", "model": "/models/qwen", "reason": None},
    {"name": "student-b", "served_model_name": "chat", "state": "restarting",
     "endpoint": "http://10.0.0.1:8002/v1", "model": "/models/llama", "reason": "exit 1"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "label", "url", "name"),
    [
        ("coder", None, None, "coder"),
        ("http://h:8000", None, "http://h:8000/v1", None),
        ("http://h:8000/v1/#tiny", None, "http://h:8000/v1", "tiny"),
        ("ext=https://api.example/v1#gpt", "ext", "https://api.example/v1", "gpt"),
    ],
)
def test_specs(text: str, label: str | None, url: str | None, name: str | None) -> None:
    s = parse_spec(text)
    assert (s.label, s.url, s.name) == (label, url, name)


def test_bad_specs() -> None:
    with pytest.raises(SpecError, match="empty"):
        parse_spec(" ")
    with pytest.raises(SpecError, match="must start with http"):
        parse_spec("x=ftp://h")


def test_daemon_models_direct_and_through_the_gateway() -> None:
    direct = from_daemon(parse_spec("coder"), STATUSES, None)
    assert direct == Endpoint("coder", "http://10.0.0.1:8001/v1", "coder", "coder@/models/qwen",
                              is_vllm=True)  # fmt: skip
    gw = from_daemon(parse_spec("student-a"), STATUSES, "http://gw:8701/")
    assert isinstance(gw, Endpoint)
    assert (gw.base_url, gw.model, gw.identity) == ("http://gw:8701/v1", "coder", direct.identity)
    down = from_daemon(parse_spec("chat"), STATUSES, None)
    assert down == Unavailable("chat", "restarting: exit 1")
    with pytest.raises(SpecError, match=r"no such model in the daemon \(served: chat, coder\)"):
        from_daemon(parse_spec("nope"), STATUSES, None)


def test_the_gateway_comes_from_the_daemons_config_when_it_is_on(tmp_path: Path) -> None:
    from orchestrator.cli.eval import _gateway_url

    cfg = tmp_path / "models.toml"
    body = '[orchestrator]\nstate_dir = "s"\n[models.a]\nmodel = "m"\nport = 8001\n'
    cfg.write_text(body + '[gateway]\nenabled = true\nlisten = "0.0.0.0:8701"\n')
    args = argparse.Namespace(gateway=None, config=cfg)
    assert _gateway_url(args) == "http://127.0.0.1:8701"
    assert _gateway_url(argparse.Namespace(gateway="off", config=cfg)) is None
    explicit = argparse.Namespace(gateway="http://gw:9", config=cfg)
    assert _gateway_url(explicit) == "http://gw:9"
    cfg.write_text(body + '[gateway]\nenabled = false\nlisten = "0.0.0.0:8701"\n')
    assert _gateway_url(args) is None
    assert _gateway_url(argparse.Namespace(gateway=None, config=tmp_path / "none")) is None
