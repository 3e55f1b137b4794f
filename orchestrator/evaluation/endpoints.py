"""Who answers and who judges: daemon models by served_model_name, or any OpenAI-compatible URL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

# vLLM's /v1/models says owned_by "vllm"; the project's gateway, which fronts only the daemon's
# vLLM engines, says "mig-orchestrator". Either way the server takes vLLM's structured outputs.
VLLM_OWNERS = frozenset({"vllm", "mig-orchestrator"})


@dataclass(frozen=True)
class Endpoint:
    """One model behind one OpenAI base URL (ending in /v1)."""

    label: str
    base_url: str
    model: str
    # What the cache keys on: the model and its weights' path, not the URL, so that answers
    # asked directly are reused through the gateway and back.
    identity: str
    is_vllm: bool


@dataclass(frozen=True)
class Unavailable:
    """A model that cannot be asked; reported with its reason while the others go on."""

    label: str
    reason: str


Resolved = Endpoint | Unavailable


class SpecError(ValueError):
    """A model spec that names nothing usable."""


@dataclass(frozen=True)
class Spec:
    label: str | None
    url: str | None  # None: a daemon model named `name`
    name: str | None  # served_model_name (daemon) or the `model` to send (URL)


def parse_spec(text: str) -> Spec:
    """`NAME` (a daemon model) or `[LABEL=]URL[#MODEL]` (any OpenAI-compatible server)."""
    text = text.strip()
    if not text:
        raise SpecError("empty model spec")
    if "://" not in text:
        return Spec(None, None, text)
    label, sep, rest = text.partition("=")
    if not sep or "://" in label:
        label, rest = "", text
    url, _, model = rest.partition("#")
    if not url.startswith(("http://", "https://")):
        raise SpecError(f"{text}: the URL must start with http:// or https://")
    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return Spec(label or None, base, model or None)


def from_daemon(
    spec: Spec, statuses: Sequence[Mapping[str, Any]], gateway_url: str | None
) -> Resolved:
    """A daemon model by served_model_name (or its config name); through the gateway if on."""
    name = str(spec.name)
    match = [s for s in statuses if s.get("served_model_name") == name] or [
        s for s in statuses if s.get("name") == name
    ]
    if not match:
        known = ", ".join(sorted(str(s.get("served_model_name")) for s in statuses)) or "none"
        raise SpecError(f"{name}: no such model in the daemon (served: {known})")
    s = match[0]
    served = str(s.get("served_model_name") or s["name"])
    label = spec.label or served
    if s.get("state") != "ready":
        return Unavailable(label, f"{s.get('state')}: {s.get('reason') or 'not ready'}")
    base = f"{gateway_url.rstrip('/')}/v1" if gateway_url else str(s["endpoint"]).rstrip("/")
    return Endpoint(label, base, served, f"{served}@{s.get('model', '')}", is_vllm=True)


async def from_url(spec: Spec, http: httpx.AsyncClient, timeout_s: float = 10.0) -> Resolved:
    """Ask the server's /v1/models for the model (and whether it is vLLM)."""
    base = str(spec.url)
    try:
        r = await http.get(f"{base}/models", timeout=timeout_s)
        r.raise_for_status()
        data = r.json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return Unavailable(spec.label or spec.name or base, f"{base}/models: {exc}")
    entries = {str(d.get("id")): d for d in data if isinstance(d, dict)}
    name = spec.name or next(iter(entries), None)
    if name is None:
        return Unavailable(spec.label or base, f"{base}/models lists no model")
    if name not in entries:
        have = ", ".join(entries) or "none"
        return Unavailable(spec.label or name, f"{base} does not serve {name} (it serves {have})")
    entry = entries[name]
    identity = f"{name}@{entry.get('root') or base}"
    return Endpoint(
        spec.label or name, base, name, identity, is_vllm=entry.get("owned_by") in VLLM_OWNERS
    )
