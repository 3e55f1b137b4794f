"""The OpenAI gateway in front of the engines: one pod, its SQLite database on a volume claim."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.config import Config
from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.k8s import names

Obj = dict[str, Any]
DATA_DIR = "/var/lib/mig-orchestrator"
CONFIG_DIR = "/etc/mig-orchestrator"
CONFIG_MAP = "mig-orchestrator-config"


def routes(cfg: Config, k8s: KubernetesSettings) -> list[dict[str, str]]:
    """The gateway's fixed route table: each served name to its engine's Service. There is no
    daemon in a cluster to poll; Kubernetes' readiness keeps a Service's endpoints honest."""
    return [
        {
            "model": m.served_model_name or name,
            "url": f"http://{name}.{k8s.namespace}.svc:{m.port}",
        }
        for name, m in sorted(cfg.models.items())
    ]


def config_map(cfg: Config, k8s: KubernetesSettings, models_toml: str) -> Obj:
    """models.toml for reference, and routes.json, which the gateway serves from."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(CONFIG_MAP, k8s),
        "data": {
            "models.toml": models_toml,
            "routes.json": json.dumps(routes(cfg, k8s), indent=2) + "\n",
        },
    }


def claim(k8s: KubernetesSettings) -> Obj:
    spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": k8s.gateway.storage}},
    }
    if k8s.gateway.storage_class is not None:
        spec["storageClassName"] = k8s.gateway.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": names.metadata(names.GATEWAY, k8s),
        "spec": spec,
    }


def deployment(k8s: KubernetesSettings) -> Obj:
    """One replica, Recreate: a SQLite database has one writer, on a ReadWriteOnce claim."""
    labels = {**names.gateway_selector(), **names.PART_OF}
    port = k8s.gateway.port
    tcp = {"tcpSocket": {"port": names.PORT_NAME}, "periodSeconds": 5}
    container = {
        "name": "gateway",
        "image": k8s.gateway.image,
        "command": ["python", "-m", "orchestrator.gateway"],
        "args": ["--listen", f"0.0.0.0:{port}", "--routes", f"{CONFIG_DIR}/routes.json"],
        "ports": [{"name": names.PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": tcp,
        "livenessProbe": {**tcp, "failureThreshold": 3},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # SQLite's temporary files
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.metadata(names.GATEWAY, k8s, labels),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": names.gateway_selector()},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": names.pod_security(k8s),
                    "containers": [container],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": names.GATEWAY}},
                        {"name": "config", "configMap": {"name": CONFIG_MAP}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def service(k8s: KubernetesSettings) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(
            names.GATEWAY, k8s, {**names.gateway_selector(), **names.PART_OF}
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": names.gateway_selector(),
            "ports": [
                {
                    "name": names.PORT_NAME,
                    "port": k8s.gateway.port,
                    "targetPort": names.PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }
