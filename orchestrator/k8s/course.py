"""The course's shared objects: namespace, NVML fix, network policy, PodMonitor, MIG configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import Config
from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.engine.nvml_fix import SHIM_DIR
from orchestrator.k8s import names
from orchestrator.k8s.pools import ClusterPlan

Obj = dict[str, Any]
SHIM_FILES = ("sitecustomize.py", "mig_orchestrator_nvml_shim.py")


def namespace(k8s: KubernetesSettings) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": k8s.namespace,
            # Every pod rendered here meets the restricted Pod Security Standard; keep it so.
            "labels": {**names.PART_OF, "pod-security.kubernetes.io/enforce": "restricted"},
        },
    }


def nvml_shim(k8s: KubernetesSettings, shim_dir: Path = SHIM_DIR) -> Obj:
    """The MIG NVML fix's two standard-library files, mounted on the engines' PYTHONPATH."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(names.SHIM_CONFIGMAP, k8s),
        "data": {f: (shim_dir / f).read_text(encoding="utf-8") for f in SHIM_FILES},
    }


def network_policy(cfg: Config, k8s: KubernetesSettings) -> Obj:
    """Engines take connections only from the gateway (when rendered), Prometheus and the
    namespaces listed in kubernetes.client_namespaces."""
    peers: list[Obj] = [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": k8s.prometheus.namespace}
            },
            "podSelector": {"matchLabels": dict(k8s.prometheus.pod_labels)},
        }
    ]
    if k8s.gateway.enabled:
        peers.append({"podSelector": {"matchLabels": names.gateway_selector()}})
    peers += [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        for ns in k8s.client_namespaces
    ]
    ports = [
        {"protocol": "TCP", "port": port} for port in sorted({m.port for m in cfg.models.values()})
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": names.metadata("mig-orchestrator-engines", k8s),
        "spec": {
            "podSelector": {"matchLabels": {names.COMPONENT: "engine", **names.PART_OF}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": ports}],
        },
    }


def pod_monitor(k8s: KubernetesSettings) -> Obj:
    """vLLM's /metrics of every engine, for the Prometheus Operator."""
    labels = {**names.PART_OF, **k8s.prometheus.monitor_labels}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": names.metadata("mig-orchestrator-engines", k8s, labels),
        "spec": {
            "selector": {"matchLabels": {names.COMPONENT: "engine", **names.PART_OF}},
            "podMetricsEndpoints": [{"port": names.PORT_NAME, "path": "/metrics"}],
        },
    }


def mig_parted(plan: ClusterPlan, k8s: KubernetesSettings) -> Obj:
    """The planner's mig-parted config, where the GPU operator's mig-manager reads it."""
    config = {"version": "v1", "mig-configs": plan.mig_configs}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.MIG_PARTED_CONFIGMAP,
            "namespace": k8s.gpu_operator_namespace,
            "labels": names.PART_OF,
        },
        "data": {"config.yaml": yaml.safe_dump(config, sort_keys=False)},
    }
