"""Names, labels and shared pieces every rendered object agrees on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.config import Config
from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.inengine.nvml_shim.mig_orchestrator_nvml_shim import CONTAINER_SLICE, UUID_ENV

PART_OF = {"app.kubernetes.io/part-of": "mig-orchestrator"}
COMPONENT = "app.kubernetes.io/component"
INSTANCE = "app.kubernetes.io/instance"
PORT_NAME = "http"
API_KEY_KEY = "api-key"  # the key inside each model's API-key Secret
HF_TOKEN_KEY = "token"  # the key inside kubernetes.hf_token_secret
SHIM_CONFIGMAP = "mig-orchestrator-nvml-shim"
SHIM_MOUNT = "/opt/mig-orchestrator/nvml-shim"
SHIM_UUID_ENV = UUID_ENV
MIG_PARTED_CONFIGMAP = "mig-orchestrator-mig-parted-config"
GATEWAY = "mig-orchestrator-gateway"
# On every node of a pool, beside nvidia.com/mig.config: a whole-GPU pool's config
# (all-disabled) is also every other MIG-capable node's default.
POOL_LABEL = "mig-orchestrator/pool"


def engine_selector(name: str) -> dict[str, str]:
    return {COMPONENT: "engine", INSTANCE: name}


def engine_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "vllm", **engine_selector(name), **PART_OF}


def gateway_selector() -> dict[str, str]:
    return {COMPONENT: "gateway", INSTANCE: GATEWAY}


def metadata(
    name: str,
    k8s: KubernetesSettings,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "namespace": k8s.namespace, "labels": labels or PART_OF}
    if annotations:
        out["annotations"] = annotations
    return out


def api_key_secret(model: str) -> str:
    """The Secret (key API_KEY_KEY) that holds one model's API key; created by the admin."""
    return f"{model}-api-key"


@dataclass(frozen=True)
class SecretRef:
    """A Secret the admin creates from a file; the render only names it."""

    name: str
    key: str
    source: str  # the file it is made from, as models.toml names it


def secrets(cfg: Config, k8s: KubernetesSettings) -> list[SecretRef]:
    out = [
        SecretRef(api_key_secret(name), API_KEY_KEY, str(m.api_key_file))
        for name, m in sorted(cfg.models.items())
        if m.api_key_file is not None
    ]
    if k8s.hf_token_secret is not None:
        out.append(SecretRef(k8s.hf_token_secret, HF_TOKEN_KEY, "HF_TOKEN_FILE"))
    return out


def shim_env() -> dict[str, str]:
    """Arms the MIG NVML fix for the one MIG device the container runtime gives the pod."""
    return {UUID_ENV: CONTAINER_SLICE}


def pod_security(k8s: KubernetesSettings) -> dict[str, Any]:
    uid = k8s.run_as_user
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
