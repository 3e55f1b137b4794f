"""Settings that work on one host but that Kubernetes cannot express: refused, naming each."""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath

from orchestrator.config import Config, ModelConfig
from orchestrator.config.kubernetes import DNS_LABEL, KubernetesSettings

_DNS = re.compile(DNS_LABEL)


def refusals(cfg: Config, k8s: KubernetesSettings) -> list[str]:
    """One line per setting that cannot be rendered, naming the model (or table) and setting."""
    errors: list[str] = []
    if k8s.image is None:
        errors.append("kubernetes.image: required: the vLLM image with its tag (or --image)")
    if k8s.gateway.enabled and k8s.gateway.image is None:
        errors.append("kubernetes.gateway.image: required when the gateway is enabled")
    for name, m in sorted(cfg.models.items()):
        errors += [f"models.{name}{e}" for e in _model_refusals(name, m, k8s)]
    return errors


def _model_refusals(name: str, m: ModelConfig, k8s: KubernetesSettings) -> list[str]:
    out: list[str] = []
    if not _DNS.match(name):
        out.append(
            ": the model's name becomes its Deployment and Service name, which must be a DNS "
            "label (lowercase letters, digits and '-', starting with a letter, at most 63)"
        )
    if m.slice is not None:
        what = "a GPU index" if isinstance(m.slice, int) or str(m.slice).isdigit() else "a UUID"
        out.append(
            f".slice: {m.slice!r} pins {what}; on Kubernetes the device plugin picks the device, "
            "so ask for a MIG profile (profile = ...) instead"
        )
    if m.share_gpu:
        out.append(
            ".share_gpu: the device plugin gives each container whole devices; two engines "
            "cannot share one GPU's memory by utilisation"
        )
    if m.profile is not None and "+" in m.profile:
        out.append(
            f".profile: {m.profile!r}: a Kubernetes resource name cannot contain '+', so the "
            "device plugin offers no such resource"
        )
    if _loopback(m.host):
        out.append(f".host: {m.host} is a loopback address: its Service could not reach it")
    out += _model_path(m, k8s)
    return out


def _loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def _model_path(m: ModelConfig, k8s: KubernetesSettings) -> list[str]:
    """A local path exists only on this host, unless it lies on the model cache volume."""
    if not m.model.startswith(("/", "./", "../", "~")):
        return []  # a hub id, fetched into the cache
    cache = k8s.model_cache
    if cache is not None and PurePosixPath(m.model).is_relative_to(cache.mount_path):
        return []
    where = (
        f"under the model cache's mount_path {cache.mount_path}"
        if cache
        else ("on a model cache volume ([kubernetes.model_cache])")
    )
    return [f".model: {m.model} is a path on this host; in a pod it must be {where}"]
