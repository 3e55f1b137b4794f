"""models.toml: the sysadmin's description of the daemon, its defaults and one table per student."""

from orchestrator.config.errors import ConfigError
from orchestrator.config.host import (
    check_this_host,
    config_warnings,
    unprivileged_port_start,
)
from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.config.load import load_config, parse_config, read_config_text
from orchestrator.config.settings import (
    DEFAULT_LISTEN,
    MAX_ARG_BYTES,
    SHARED_GPU_UTILIZATION_CAP,
    VLLM_DEFAULT_UTILIZATION,
    Config,
    GatewaySettings,
    ModelConfig,
    OrchestratorSettings,
    SizeHint,
    VllmSettings,
    is_loopback,
    parse_listen,
)

__all__ = [
    "DEFAULT_LISTEN",
    "MAX_ARG_BYTES",
    "SHARED_GPU_UTILIZATION_CAP",
    "VLLM_DEFAULT_UTILIZATION",
    "Config",
    "ConfigError",
    "GatewaySettings",
    "KubernetesSettings",
    "ModelConfig",
    "OrchestratorSettings",
    "SizeHint",
    "VllmSettings",
    "check_this_host",
    "config_warnings",
    "is_loopback",
    "load_config",
    "parse_config",
    "parse_listen",
    "read_config_text",
    "unprivileged_port_start",
]
