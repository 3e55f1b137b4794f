"""Telemetry settings: the request log's retention, the gateway's OTLP endpoint on its command
line, a model's vLLM --otlp-traces-endpoint, and bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import ConfigError, parse_config
from orchestrator.daemon.gateway_keeper import gateway_launch
from orchestrator.engine.launch import setting_flags

MODEL = '[models.a]\nmodel = "m"\nport = 18001\nhost = "127.0.0.1"\nstudent = "Alice"\n'
URL = "http://127.0.0.1:4318/v1/traces"


def test_defaults_keep_30_days_and_trace_nothing() -> None:
    cfg = parse_config(MODEL)
    assert cfg.gateway.request_log_days == 30 and cfg.gateway.otlp_endpoint is None
    assert "--otlp-endpoint" not in gateway_launch(parse_config(MODEL), Path("x")).argv
    assert "--otlp-traces-endpoint" not in setting_flags(cfg.effective_settings("a"))


def test_endpoints_reach_the_gateway_and_vllm() -> None:
    text = f'[gateway]\nenabled = true\notlp_endpoint = "{URL}"\n{MODEL}'
    text += 'otlp_traces_endpoint = "http://127.0.0.1:4317"\n'
    cfg = parse_config(text)
    argv = gateway_launch(cfg, Path("x")).argv
    assert argv[argv.index("--otlp-endpoint") + 1] == URL
    flags = setting_flags(cfg.effective_settings("a"))
    assert flags[flags.index("--otlp-traces-endpoint") + 1] == "http://127.0.0.1:4317"


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("[gateway]\nrequest_log_days = 0\n", "request_log_days"),
        ('[gateway]\nrequest_log_days = "30"\n', "request_log_days"),
        ('[gateway]\notlp_endpoint = "127.0.0.1:4318"\n', "otlp_endpoint"),
        ('[defaults]\notlp_traces_endpoint = "grpc://x:4317"\n', "otlp_traces_endpoint"),
    ],
)
def test_bad_values_are_refused_by_name(line: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(line + MODEL)
