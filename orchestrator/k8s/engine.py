"""One model's Deployment and Service: the host's engine argv, in a pod on its MIG resource."""

from __future__ import annotations

import math
from typing import Any

from orchestrator.config import Config
from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.engine.launch import build_launch
from orchestrator.k8s import names
from orchestrator.k8s.pools import MIG_CONFIG_LABEL, Seat

HEALTH_PATH = "/health"  # vLLM's OpenAI server: 200 once the engine serves
HOME = "/home/vllm"  # vLLM, torch and triton write their caches under $HOME
# What the daemon sets for its own bookkeeping on a host, or what the pod sets otherwise.
_HOST_ONLY_ENV = ("VLLM_API_KEY", "HF_HOME", "PYTHONPATH")

Obj = dict[str, Any]


def engine_args(cfg: Config, name: str) -> list[str]:
    """The engine's arguments: the host's argv without its command prefix."""
    launch = build_launch(cfg, name, None, base_env={}, read_secrets=False)
    return launch.argv[len(launch.command) :]


def engine_env(cfg: Config, name: str, seat: Seat, k8s: KubernetesSettings) -> list[Obj]:
    """The container's environment: the host's, with secrets referenced and paths of the pod."""
    launch = build_launch(cfg, name, None, base_env={}, read_secrets=False)
    values = {k: v for k, v in launch.extra_env.items() if k not in _HOST_ONLY_ENV}
    # What a plain launch adds on top (the fork start method), without naming it twice.
    values.update({k: v for k, v in launch.spawn_env().items() if k not in launch.env})
    values["HOME"] = HOME
    if k8s.model_cache is not None:
        values["HF_HOME"] = k8s.model_cache.mount_path
    pythonpath = [p for p in [launch.extra_env.get("PYTHONPATH")] if p]
    if seat.profile is not None and cfg.effective_settings(name).mig_nvml_fix is not False:
        values.update(names.shim_env())
        pythonpath.insert(0, names.SHIM_MOUNT)
    if pythonpath:
        values["PYTHONPATH"] = ":".join(pythonpath)
    env: list[Obj] = [{"name": k, "value": values[k]} for k in sorted(values)]
    refs = []
    if cfg.models[name].api_key_file is not None:
        refs.append(("VLLM_API_KEY", names.api_key_secret(name), names.API_KEY_KEY))
    if k8s.hf_token_secret is not None:
        refs.append(("HF_TOKEN", k8s.hf_token_secret, names.HF_TOKEN_KEY))
    env += [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for var, secret, key in refs
    ]
    return env


def probes(cfg: Config, name: str) -> Obj:
    """startup, readiness and liveness from the daemon's health settings (whole seconds).

    Readiness gives up as late as liveness: with one replica, a pod taken out of its Service for
    one slow answer refuses every client instead of answering them slowly."""
    o = cfg.orchestrator
    period = max(1, math.ceil(o.health_interval_s))
    timeout = max(1, math.ceil(o.health_timeout_s))
    startup_s = cfg.models[name].startup_timeout_s or o.startup_timeout_s
    get = {"path": HEALTH_PATH, "port": names.PORT_NAME}

    def probe(failures: int) -> Obj:
        return {
            "httpGet": dict(get),
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": failures,
        }

    return {
        "startupProbe": probe(max(1, math.ceil(startup_s / period))),
        "readinessProbe": probe(o.unhealthy_threshold),
        "livenessProbe": probe(o.unhealthy_threshold),
    }


def _container(cfg: Config, name: str, seat: Seat, k8s: KubernetesSettings) -> Obj:
    m = cfg.models[name]
    limits: Obj = {seat.resource: 1}
    requests: Obj = {}
    for key in ("cpu", "memory"):
        value = getattr(k8s, key)
        if value is not None:
            limits[key] = requests[key] = value
    mounts: list[Obj] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "home", "mountPath": HOME},
    ]
    if k8s.model_cache is not None:
        mounts.append(
            {
                "name": "model-cache",
                "mountPath": k8s.model_cache.mount_path,
                "readOnly": k8s.model_cache.read_only,
            }
        )
    env = engine_env(cfg, name, seat, k8s)
    if any(e["name"] == names.SHIM_UUID_ENV for e in env):
        mounts.append({"name": "nvml-shim", "mountPath": names.SHIM_MOUNT, "readOnly": True})
    return {
        "name": "vllm",
        "image": k8s.image,
        "command": list(k8s.engine_command),
        "args": engine_args(cfg, name),
        "env": env,
        "ports": [{"name": names.PORT_NAME, "containerPort": m.port, "protocol": "TCP"}],
        "resources": {"limits": limits, **({"requests": requests} if requests else {})},
        **probes(cfg, name),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }


def _volumes(k8s: KubernetesSettings, container: Obj) -> list[Obj]:
    volumes: list[Obj] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}},
        {"name": "home", "emptyDir": {}},
    ]
    mounted = {m["name"] for m in container["volumeMounts"]}
    if "model-cache" in mounted and k8s.model_cache is not None:
        volumes.append(
            {"name": "model-cache", "persistentVolumeClaim": {"claimName": k8s.model_cache.claim}}
        )
    if "nvml-shim" in mounted:
        volumes.append(
            {"name": "nvml-shim", "configMap": {"name": names.SHIM_CONFIGMAP, "defaultMode": 0o444}}
        )
    return volumes


def deployment(cfg: Config, name: str, seat: Seat, k8s: KubernetesSettings) -> Obj:
    """One replica, Recreate: a slice holds one engine, so the old pod must go first."""
    labels = names.engine_labels(name)
    container = _container(cfg, name, seat, k8s)
    stop_s = math.ceil(cfg.orchestrator.stop_grace_s)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.metadata(name, k8s, labels, _annotations(cfg, name, seat)),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": names.engine_selector(name)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": stop_s,
                    # Service links would put VLLM_PORT-style variables in the engine's
                    # environment, and vLLM reads VLLM_PORT as its own setting.
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": names.pod_security(k8s),
                    "nodeSelector": {
                        MIG_CONFIG_LABEL: seat.mig_config,
                        names.POOL_LABEL: seat.pool,
                    },
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [container],
                    "volumes": _volumes(k8s, container),
                },
            },
        },
    }


def _annotations(cfg: Config, name: str, seat: Seat) -> dict[str, str]:
    m = cfg.models[name]
    out = {"mig-orchestrator/resource": seat.resource, "mig-orchestrator/pool": seat.pool}
    if m.student is not None:
        out["mig-orchestrator/student"] = m.student
    return out


def service(cfg: Config, name: str, k8s: KubernetesSettings) -> Obj:
    port = cfg.models[name].port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(name, k8s, names.engine_labels(name)),
        "spec": {
            "type": "ClusterIP",
            "selector": names.engine_selector(name),
            "ports": [
                {
                    "name": names.PORT_NAME,
                    "port": port,
                    "targetPort": names.PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }
