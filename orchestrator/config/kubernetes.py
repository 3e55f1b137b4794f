"""The [kubernetes] table of models.toml: where and how `k8s render` deploys the same models."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# Object names that become Service names and DNS labels (RFC 1035, as Kubernetes checks them).
DNS_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
# A resource quantity such as "8Gi", "500m" or "4" (Kubernetes' quantity grammar, no exponents).
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_TAGGED = re.compile(r"^[^\s@]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _pinned_image(image: str) -> str:
    """An image must say which build it is: a Recreate Deployment of `:latest` differs per node."""
    if "/" in image.rsplit(":", 1)[-1] or not _TAGGED.match(image):
        raise ValueError(
            f"{image!r} has no tag: name the vLLM build, e.g. 'vllm/vllm-openai:v0.11.0' "
            "or an @sha256: digest"
        )
    if image.endswith(":latest"):
        raise ValueError(f"{image!r}: ':latest' changes under a running course; name a version")
    return image


def _labels(v: dict[str, str]) -> dict[str, str]:
    for key, value in v.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"{key[:80]!a} is not a Kubernetes label key")
        if not _LABEL_VALUE.match(value):
            raise ValueError(f"{key}: {value[:80]!a} is not a Kubernetes label value")
    return v


DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL)]
# A pool's name, with room for the "-N" its mig-parted config names add within 63 characters.
PoolName = Annotated[str, StringConstraints(pattern=r"^[a-z]([-a-z0-9]{0,56}[a-z0-9])?$")]
Image = Annotated[
    str, StringConstraints(min_length=1, max_length=512), AfterValidator(_pinned_image)
]
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
MountPath = Annotated[str, StringConstraints(pattern=r"^/[^\x00-\x1f\x7f:]{0,1023}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class NodePool(_Strict):
    """Nodes of one GPU type: `gpus` per node, `nodes` of them; MIG on unless `mig = false`."""

    gpu: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    gpus: Annotated[int, Field(ge=1, le=16)] = 1
    nodes: Annotated[int, Field(ge=1, le=1000)] = 1
    mig: bool = True
    # Only for a pool with MIG off: the models that get one whole GPU each (nvidia.com/gpu).
    models: list[str] = []


class ModelCache(_Strict):
    """An existing PersistentVolumeClaim holding the Hugging Face cache, shared by the engines."""

    claim: DnsLabel
    mount_path: MountPath = "/models"
    read_only: bool = False


class Prometheus(_Strict):
    """Where Prometheus runs and the labels its PodMonitor selector wants."""

    namespace: DnsLabel = "monitoring"
    pod_labels: Labels = {"app.kubernetes.io/name": "prometheus"}
    monitor_labels: Labels = {}


class GatewaySettings(_Strict):
    """The OpenAI gateway in front of the engines (`python -m orchestrator.gateway`)."""

    enabled: bool = False
    image: Image | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    storage: Quantity = "1Gi"
    storage_class: DnsLabel | None = None


class KubernetesSettings(_Strict):
    namespace: DnsLabel = "mig-orchestrator"
    image: Image | None = None  # required to render; a CLI --image may give it
    # The vLLM entry point inside the image; the host's engine_command is replaced by it.
    engine_command: Annotated[list[str], Field(min_length=1, max_length=16)] = ["vllm", "serve"]
    model_cache: ModelCache | None = None
    shm_size: Quantity = "8Gi"
    cpu: Quantity | None = None
    memory: Quantity | None = None
    run_as_user: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1000
    # A Secret with key "token" that becomes HF_TOKEN, for gated models.
    hf_token_secret: DnsLabel | None = None
    node_pools: dict[PoolName, NodePool] = {}
    prometheus: Prometheus = Prometheus()
    # Namespaces whose pods may also reach the engines (an ingress controller, a notebook hub).
    client_namespaces: list[DnsLabel] = []
    gateway: GatewaySettings = GatewaySettings()
    # Where the GPU operator runs: its mig-manager reads the mig-parted ConfigMap there.
    gpu_operator_namespace: DnsLabel = "gpu-operator"
