"""README.md of a rendered directory: what the cluster admin does, in order, for this course."""

from __future__ import annotations

import shlex
from pathlib import Path

from orchestrator.config import Config
from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.k8s import names
from orchestrator.k8s.pools import MIG_CONFIG_LABEL, ClusterPlan


def steps(cfg: Config, k8s: KubernetesSettings, plan: ClusterPlan, source: str) -> str:
    ns = k8s.namespace
    lines = [
        f"# {ns}: the models of {Path(source).name} on Kubernetes",
        "",
        "Rendered by `mig-orchestrator k8s render`. Change models.toml and render again rather",
        "than editing these files; `mig-orchestrator k8s render --check` says what is out of date.",
        "",
        "## 1. The GPU operator: mixed MIG strategy, this course's mig-parted config",
        "",
        "```",
        "helm upgrade --install gpu-operator nvidia/gpu-operator "
        f"-n {k8s.gpu_operator_namespace} \\",
        "  --set mig.strategy=mixed \\",
        f"  --set migManager.config.name={names.MIG_PARTED_CONFIGMAP}",
        "```",
        "",
        "## 2. The MIG configs, then each pool's node labels (mig-manager repartitions the GPUs)",
        "",
        "```",
        "kubectl apply -k gpu-operator",
        "```",
        "",
        *_labels(k8s, plan),
        "",
        "## 3. Create the Secrets the engines reference (never stored in these files)",
        "",
        *_secrets(cfg, k8s),
        "",
        "## 4. Apply",
        "",
        "```",
        "kubectl apply -k .",
        f"kubectl -n {ns} get deploy,pods,svc -l {names.COMPONENT}=engine",
        "```",
        "",
        "## Models",
        "",
        "| model | student | resource | nodes (mig.config) | Service |",
        "|---|---|---|---|---|",
    ]
    for name, seat in sorted(plan.seats.items()):
        m = cfg.models[name]
        lines.append(
            f"| {name} | {m.student or '-'} | {seat.resource} | {seat.mig_config} | "
            f"{name}.{ns}.svc:{m.port} |"
        )
    notes = _host_only(cfg)
    if notes:
        lines += ["", "## Not rendered (single host only)", "", *notes]
    return "\n".join(lines) + "\n"


def _labels(k8s: KubernetesSettings, plan: ClusterPlan) -> list[str]:
    out = ["```"]
    for group in plan.groups:
        pool = k8s.node_pools[group.pool]
        mig = "MIG" if pool.mig else "MIG off"
        out.append(
            f"# pool {group.pool}: {group.nodes} node(s) with {pool.gpus} x {pool.gpu} ({mig})"
        )
        out.append(
            f"kubectl label node NODE {MIG_CONFIG_LABEL}={group.config} "
            f"{names.POOL_LABEL}={group.pool} --overwrite"
        )
    return [*out, "```"]


def _secrets(cfg: Config, k8s: KubernetesSettings) -> list[str]:
    cmds = [
        f"kubectl -n {k8s.namespace} create secret generic {s.name} "
        f"--from-file={s.key}={shlex.quote(s.source)}"
        for s in names.secrets(cfg, k8s)
    ]
    return ["```", *cmds, "```"] if cmds else ["None: no model has an api_key_file."]


def _host_only(cfg: Config) -> list[str]:
    """Settings the pods do without, so that nobody looks for them there."""
    out = []
    tokens = sorted(n for n, m in cfg.models.items() if m.token_file is not None)
    if tokens:
        out.append(
            f"- token_file ({', '.join(tokens)}): the control plane's per-student token; on "
            "Kubernetes, RBAC on the namespace takes its place."
        )
    if cfg.orchestrator.standby or any(m.standby for m in cfg.models.values()):
        out.append(
            "- standby: the daemon's pre-imported waiting engine; a pod restarts from its image."
        )
    return out
