"""models.toml -> the objects of a kustomize directory, file by file, with the admin's steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.config import Config
from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.k8s import course, engine, gateway, names
from orchestrator.k8s.pools import ClusterPlan, PoolError, plan_cluster
from orchestrator.k8s.steps import steps
from orchestrator.k8s.unsupported import refusals

Obj = dict[str, Any]
COURSE = "course"
GPU_OPERATOR = "gpu-operator"


class RenderError(Exception):
    """Nothing was rendered; `errors` names each model, table or setting at fault."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class Rendered:
    files: dict[str, list[Obj]]  # path in the directory -> the objects it holds
    readme: str
    plan: ClusterPlan
    settings: KubernetesSettings
    secrets: list[names.SecretRef]

    def objects(self) -> list[tuple[str, Obj]]:
        return [(path, obj) for path, objs in self.files.items() for obj in objs]


def render(cfg: Config, k8s: KubernetesSettings, source: str, models_toml: str) -> Rendered:
    """Every object for `cfg` on `k8s`; RenderError when it cannot be expressed or does not fit."""
    errors = refusals(cfg, k8s)
    if errors:
        raise RenderError(errors)
    try:
        plan = plan_cluster(cfg, k8s, source)
    except PoolError as e:
        raise RenderError(e.errors) from None
    files: dict[str, list[Obj]] = {f"{COURSE}/namespace.yaml": [course.namespace(k8s)]}
    for name in sorted(cfg.models):
        seat = plan.seats[name]
        files[f"{COURSE}/engines/{name}.yaml"] = [
            engine.deployment(cfg, name, seat, k8s),
            engine.service(cfg, name, k8s),
        ]
    if _uses_shim(files):
        files[f"{COURSE}/nvml-shim.yaml"] = [course.nvml_shim(k8s)]
    files[f"{COURSE}/network-policy.yaml"] = [course.network_policy(cfg, k8s)]
    files[f"{COURSE}/pod-monitor.yaml"] = [course.pod_monitor(k8s)]
    if k8s.gateway.enabled:
        files[f"{COURSE}/gateway.yaml"] = [
            gateway.config_map(k8s, models_toml),
            gateway.claim(k8s),
            gateway.deployment(k8s),
            gateway.service(k8s),
        ]
    files[f"{GPU_OPERATOR}/mig-parted-config.yaml"] = [course.mig_parted(plan, k8s)]
    return Rendered(files, steps(cfg, k8s, plan, source), plan, k8s, names.secrets(cfg, k8s))


def _uses_shim(files: dict[str, list[Obj]]) -> bool:
    return any(
        v.get("configMap", {}).get("name") == names.SHIM_CONFIGMAP
        for objs in files.values()
        for obj in objs
        if obj["kind"] == "Deployment"
        for v in obj["spec"]["template"]["spec"].get("volumes", [])
    )


def kustomizations(rendered: Rendered) -> dict[str, Obj]:
    """kustomization.yaml per folder (with its namespace), and the top one listing every file:
    Debian's kubectl (1.20, kustomize 2.0) takes only files as resources, not folders."""
    per_dir: dict[str, list[str]] = {}
    for path in rendered.files:
        folder, _, rest = path.partition("/")
        per_dir.setdefault(folder, []).append(rest)
    namespaces = {
        COURSE: rendered.settings.namespace,
        GPU_OPERATOR: rendered.settings.gpu_operator_namespace,
    }
    out = {
        f"{folder}/kustomization.yaml": _kustomization(paths, namespaces[folder])
        for folder, paths in per_dir.items()
    }
    out["kustomization.yaml"] = _kustomization(list(rendered.files), None)
    return out


def _kustomization(resources: list[str], namespace: str | None) -> Obj:
    obj: Obj = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace is not None:
        obj["namespace"] = namespace
    obj["resources"] = sorted(resources)
    return obj
