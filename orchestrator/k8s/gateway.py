"""The OpenAI gateway in front of the engines: one pod, its SQLite database on a volume claim."""

from __future__ import annotations

from typing import Any

from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.k8s import names

Obj = dict[str, Any]
DATA_DIR = "/var/lib/mig-orchestrator"
CONFIG_DIR = "/etc/mig-orchestrator"
CONFIG_MAP = "mig-orchestrator-config"


def config_map(k8s: KubernetesSettings, models_toml: str) -> Obj:
    """models.toml as the gateway reads it: the routes to the engines' Services come from it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(CONFIG_MAP, k8s),
        "data": {"models.toml": models_toml},
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
        "env": [{"name": "MIG_ORCH_CONFIG", "value": f"{CONFIG_DIR}/models.toml"}],
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
