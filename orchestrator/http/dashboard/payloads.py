"""The JSON the dashboard's page reads, shaped from the daemon's objects."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from orchestrator.engine.lifecycle import Engine
from orchestrator.gpu.history import Tick
from orchestrator.gpu.inventory import Gpu
from orchestrator.gpu.nvml import GpuSample

_SLICE_FIELDS = ("uuid", "profile", "gi_id", "ci_id", "memory_used_bytes", "memory_total_bytes")


def gpus(found: Iterable[GpuSample | Gpu], engines: Mapping[str, Engine]) -> list[dict[str, Any]]:
    """Each GPU (a telemetry sample, or the inventory before the first) with its slices and the
    models on them."""
    on: dict[str, list[str]] = {}
    for name, e in sorted(engines.items()):
        if e.spec.slice is not None:
            on.setdefault(e.spec.slice.uuid, []).append(name)
    return [
        {
            "index": g.index,
            "name": g.name,
            "mig": g.mig_enabled,
            "sm_util_pct": getattr(g, "sm_util_pct", None),  # an inventory Gpu has none
            "memory_used_bytes": g.memory_used_bytes,
            "memory_total_bytes": g.memory_total_bytes,
            "slices": [
                {**{f: getattr(s, f) for f in _SLICE_FIELDS}, "models": on.get(s.uuid, [])}
                for s in g.slices
            ],
        }
        for g in found
    ]


def history(ticks: Iterable[Tick]) -> list[dict[str, Any]]:
    return [{"at": t.at, "gpus": {i: asdict(p) for i, p in t.gpus.items()}} for t in ticks]


def merge(extra: dict[str, Any], **raw: bytes) -> bytes:
    """`extra` as JSON with already-serialized members added (the REST API's status text)."""
    members = [json.dumps(extra, separators=(",", ":")).encode()[1:-1]]
    members += [json.dumps(k).encode() + b":" + v for k, v in raw.items()]
    return b"{" + b",".join(m for m in members if m) + b"}"
