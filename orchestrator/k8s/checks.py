"""Checks of a rendered course before it reaches a cluster; each problem names object and field.

Consistency: resources match the planner's slices, ports, probes, volumes and Secret references
agree. Schema: the official Kubernetes schemas of several minor versions (kubernetes-validate).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import yaml

from orchestrator.k8s import names
from orchestrator.k8s.pools import MIG_CONFIG_LABEL
from orchestrator.k8s.render import Rendered

Obj = dict[str, Any]
# Minor versions whose schemas every core object must pass (kubernetes-validate >= 1.36 has them).
SCHEMA_VERSIONS = ("1.30", "1.33", "1.36")
_POD = "spec.template.spec"


def _where(path: str, obj: Obj) -> str:
    return f"{path}: {obj['kind']}/{obj['metadata']['name']}"


def consistency(rendered: Rendered) -> list[str]:
    """Problems between the objects, and with the Secrets README.md tells the admin to create."""
    secrets = {(s.name, s.key) for s in rendered.secrets}
    objs = rendered.objects()
    config_maps = {o["metadata"]["name"] for _, o in objs if o["kind"] == "ConfigMap"}
    engines = [(p, o) for p, o in objs if o["kind"] == "Deployment" and _is_engine(o)]
    errors: list[str] = []
    for path, dep in engines:
        errors += [
            f"{_where(path, dep)}: {e}" for e in _engine(rendered, dep, secrets, config_maps)
        ]
    errors += _slices(rendered, engines)
    for path, obj in objs:
        if obj["kind"] == "Service":
            errors += [f"{_where(path, obj)}: {e}" for e in _service(obj, objs)]
        elif obj["kind"] in ("NetworkPolicy", "PodMonitor"):
            errors += [f"{_where(path, obj)}: {e}" for e in _reaches(obj, engines)]
    return errors


def _is_engine(dep: Obj) -> bool:
    return dep["spec"]["template"]["metadata"]["labels"].get(names.COMPONENT) == "engine"


def _engine(
    rendered: Rendered, dep: Obj, secrets: set[tuple[str, str]], config_maps: set[str]
) -> list[str]:
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    model = dep["spec"]["template"]["metadata"]["labels"][names.INSTANCE]
    seat = rendered.plan.seats[model]
    out: list[str] = []
    gpus = {k: v for k, v in c["resources"]["limits"].items() if k.startswith("nvidia.com/")}
    if gpus != {seat.resource: 1}:
        out.append(
            f"{_POD}.containers[0].resources.limits: {gpus}, but the layout planner gave "
            f"{model} {seat.resource}"
        )
    selected = pod.get("nodeSelector", {}).get(MIG_CONFIG_LABEL)
    if selected not in mig_configs(rendered):
        out.append(f"{_POD}.nodeSelector.{MIG_CONFIG_LABEL}: {selected!r} is no mig-parted config")
    pool = pod.get("nodeSelector", {}).get(names.POOL_LABEL)
    if pool != seat.pool:
        out.append(
            f"{_POD}.nodeSelector.{names.POOL_LABEL}: {pool!r}, but {model} is in {seat.pool}"
        )
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    args = c["args"]
    served = int(args[args.index("--port") + 1]) if "--port" in args else None
    if ports.get(names.PORT_NAME) != served:
        out.append(f"{_POD}.containers[0].ports: {ports}, but vLLM listens on --port {served}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = c.get(probe, {}).get("httpGet", {}).get("port")
        if port not in ports:
            out.append(f"{_POD}.containers[0].{probe}.httpGet.port: {port!r} is no container port")
    for i, env in enumerate(c.get("env", [])):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None and (ref["name"], ref["key"]) not in secrets:
            out.append(
                f"{_POD}.containers[0].env[{i}].valueFrom.secretKeyRef: {ref['name']}/"
                f"{ref['key']} is not among the Secrets README.md tells the admin to create"
            )
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for i, mount in enumerate(c.get("volumeMounts", [])):
        if mount["name"] not in volumes:
            out.append(f"{_POD}.containers[0].volumeMounts[{i}].name: no volume {mount['name']!r}")
    for i, v in enumerate(pod.get("volumes", [])):
        if "configMap" in v and v["configMap"]["name"] not in config_maps:
            out.append(
                f"{_POD}.volumes[{i}].configMap.name: {v['configMap']['name']!r} not rendered"
            )
    return out


def _slices(rendered: Rendered, engines: list[tuple[str, Obj]]) -> list[str]:
    """The MIG devices the engines request, per node config, fit what mig-parted creates."""
    offered: Counter[tuple[str, str]] = Counter()
    configs = mig_configs(rendered)
    for group in rendered.plan.groups:
        for entry in configs.get(group.config, []):
            devices = entry["devices"]
            count = len(devices) if isinstance(devices, list) else 0
            for profile, n in dict(entry.get("mig-devices") or {}).items():
                offered[(group.config, f"nvidia.com/mig-{profile}")] += n * count * group.nodes
    wanted: Counter[tuple[str, str]] = Counter()
    for _, dep in engines:
        pod = dep["spec"]["template"]["spec"]
        config = pod.get("nodeSelector", {}).get(MIG_CONFIG_LABEL, "")
        for res in pod["containers"][0]["resources"]["limits"]:
            if res.startswith("nvidia.com/mig-"):
                wanted[(config, res)] += 1
    return [
        f"{names.MIG_PARTED_CONFIGMAP}: mig-configs.{config}: {n} engines request {res}, "
        f"its nodes hold {offered[(config, res)]}"
        for (config, res), n in sorted(wanted.items())
        if n > offered[(config, res)]
    ]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _service(svc: Obj, objs: list[tuple[str, Obj]]) -> list[str]:
    selector = svc["spec"]["selector"]
    pods = [
        o["spec"]["template"]
        for _, o in objs
        if o["kind"] == "Deployment"
        and _matches(selector, o["spec"]["template"]["metadata"]["labels"])
    ]
    if len(pods) != 1:
        return [f"spec.selector: matches {len(pods)} Deployments' pods, not one"]
    ports = {
        p["name"]: p["containerPort"] for c in pods[0]["spec"]["containers"] for p in c["ports"]
    }
    out = []
    for i, p in enumerate(svc["spec"]["ports"]):
        if p["targetPort"] not in ports:
            out.append(f"spec.ports[{i}].targetPort: {p['targetPort']!r} is no port of its pod")
        elif p["port"] != ports[p["targetPort"]]:
            out.append(
                f"spec.ports[{i}].port: {p['port']}, but its pod serves on {ports[p['targetPort']]}"
            )
    return out


def _reaches(obj: Obj, engines: list[tuple[str, Obj]]) -> list[str]:
    """The NetworkPolicy and the PodMonitor select every engine, on the engine's port."""
    selector = (obj["spec"].get("podSelector") or obj["spec"]["selector"])["matchLabels"]
    out = []
    allowed = {p["port"] for rule in obj["spec"].get("ingress", []) for p in rule.get("ports", [])}
    for _, dep in engines:
        template = dep["spec"]["template"]
        name = dep["metadata"]["name"]
        if not _matches(selector, template["metadata"]["labels"]):
            out.append(f"spec selector: does not select engine {name}")
        port = template["spec"]["containers"][0]["ports"][0]["containerPort"]
        if obj["kind"] == "NetworkPolicy" and port not in allowed:
            out.append(f"spec.ingress[0].ports: engine {name}'s port {port} is not allowed")
    return out


def schema(
    rendered: Rendered, versions: tuple[str, ...] = SCHEMA_VERSIONS
) -> tuple[list[str], list[str]]:
    """(problems, notes) from the official schemas, strict; kinds they lack are noted."""
    import kubernetes_validate as kv  # optional: pip install 'mig-orchestrator[k8s]'

    errors: list[str] = []
    skipped: set[str] = set()
    for path, obj in rendered.objects():
        for version in versions:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                field = ".".join(str(p) for p in e.path) or "(object)"
                errors.append(f"{_where(path, obj)}: {field}: {e.message} (Kubernetes {version})")
            except kv.SchemaNotFoundError:
                skipped.add(obj["kind"])
    notes = [
        f"{k}: not a core kind, no official schema to check it against" for k in sorted(skipped)
    ]
    return errors, notes


def mig_configs(rendered: Rendered) -> dict[str, Any]:
    """mig-configs as the GPU operator's mig-manager will parse them from the ConfigMap."""
    for _, obj in rendered.objects():
        if obj["metadata"]["name"] == names.MIG_PARTED_CONFIGMAP:
            return dict(yaml.safe_load(obj["data"]["config.yaml"])["mig-configs"])
    return {}
