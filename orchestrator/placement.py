"""Assign every model one slice: pinned first, then kept, then by profile, then by memory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import (
    SHARED_GPU_UTILIZATION_CAP,
    VLLM_DEFAULT_UTILIZATION,
    Config,
    ModelConfig,
)
from orchestrator.gpu.inventory import Inventory, Slice


class PlacementError(Exception):
    """No complete plan exists; `problems` maps each unplaceable model to why."""

    def __init__(self, problems: dict[str, str], plan: Plan) -> None:
        self.problems = problems
        self.plan = plan
        super().__init__("\n".join(f"{m}: {why}" for m, why in sorted(problems.items())))


@dataclass
class Plan:
    assignments: dict[str, Slice] = field(default_factory=dict)
    unplaced: dict[str, str] = field(default_factory=dict)

    def models_on(self, slice_uuid: str) -> list[str]:
        return sorted(m for m, s in self.assignments.items() if s.uuid == slice_uuid)


def _request(m: ModelConfig) -> str:
    if m.profile is not None:
        return m.profile
    if m.min_memory_gib is not None:
        return f">= {m.min_memory_gib:g} GiB"
    if m.slice is not None:
        return f"slice {m.slice}"
    return "any free slice"


def _sort_key(s: Slice) -> tuple[int, int, str]:
    return (s.gpu_index, s.gi_id if s.gi_id is not None else -1, s.uuid)


Overrides = Mapping[str, Mapping[str, Any]]  # model -> runtime overrides in effect


def utilization(cfg: Config, name: str, overrides: Mapping[str, Any] | None = None) -> float:
    """The share of its GPU's memory `name`'s engine takes (vLLM's default when unset)."""
    u = cfg.effective_settings(name, dict(overrides or {})).gpu_memory_utilization
    return VLLM_DEFAULT_UTILIZATION if u is None else u


def within_shared_cap(utilizations: list[float]) -> bool:
    return sum(utilizations) <= SHARED_GPU_UTILIZATION_CAP + 1e-9


class _Placer:
    def __init__(self, cfg: Config, inv: Inventory, overrides: Overrides) -> None:
        self.cfg = cfg
        self.overrides = overrides
        self.gpus = inv.gpus
        self.slices = sorted(inv.slices, key=_sort_key)
        self.plan = Plan()

    def _util(self, name: str) -> float:
        return utilization(self.cfg, name, self.overrides.get(name))

    def can_take(self, name: str, s: Slice) -> bool:
        """A free slice, or a whole GPU whose every tenant opted into sharing with headroom left."""
        tenants = self.plan.models_on(s.uuid)
        if not tenants:
            return True
        if s.is_mig or not self.cfg.models[name].share_gpu:
            return False
        if not all(self.cfg.models[t].share_gpu for t in tenants):
            return False
        return within_shared_cap([self._util(t) for t in [*tenants, name]])

    def fits(self, m: ModelConfig, s: Slice) -> bool:
        if m.profile is not None:
            return s.profile == m.profile
        if m.min_memory_gib is not None:
            return s.memory_total_gib >= m.min_memory_gib
        return True

    def taken_by(self, candidates: list[Slice]) -> str:
        owners = sorted({t for s in candidates for t in self.plan.models_on(s.uuid)})
        n = len(candidates)
        which = "it is" if n == 1 else ("both are" if n == 2 else f"all {n} are")
        return f"{which} taken by {', '.join(owners)}"

    def assign(self, name: str, s: Slice) -> None:
        self.plan.assignments[name] = s

    def pinned(self, name: str, m: ModelConfig) -> None:
        pin = m.slice
        if isinstance(pin, int) or (isinstance(pin, str) and pin.isdigit()):
            idx = int(pin)
            gpu = next((g for g in self.gpus if g.index == idx), None)
            missing = f"there is no GPU {idx}"
        else:
            gpu = next((g for g in self.gpus if g.uuid == pin), None)
            missing = f"slice {pin} does not exist on this host"
        if gpu is not None and gpu.mig_enabled:
            # Judged on the GPU, not its slices: MIG may be on with no MIG device created yet.
            self.plan.unplaced[name] = (
                f"GPU {gpu.index} has MIG enabled: pin one of its MIG UUIDs or ask for a profile"
            )
            return
        if gpu is not None:
            match = [s for s in self.slices if s.gpu_index == gpu.index and not s.is_mig]
        else:
            match = [s for s in self.slices if s.uuid == pin]
        if not match:
            self.plan.unplaced[name] = missing
            return
        s = match[0]
        if not self.can_take(name, s):
            self.plan.unplaced[name] = f"needs slice {pin}: {self.taken_by([s])}"
            return
        self.assign(name, s)

    def best(self, name: str, m: ModelConfig) -> None:
        candidates = [s for s in self.slices if self.fits(m, s)]
        free = [s for s in candidates if self.can_take(name, s)]
        if free:
            if m.profile is None and m.min_memory_gib is None:
                # Nothing was asked for: the largest remaining slice is the safest guess.
                pick = max(free, key=lambda s: (s.memory_total_bytes, -s.gpu_index))
            else:
                pick = min(free, key=lambda s: (s.memory_total_bytes, *_sort_key(s)))
            self.assign(name, pick)
            return
        need = _request(m)
        if not candidates:
            sizes = sorted({s.profile or "whole GPU" for s in self.slices})
            self.plan.unplaced[name] = (
                f"needs {need}: no such slice on this host "
                f"(there are: {', '.join(sizes) or 'none'})"
            )
        else:
            self.plan.unplaced[name] = f"needs {need}: {self.taken_by(candidates)}"


def place(cfg: Config, inv: Inventory, previous: Mapping[str, str] | None = None) -> Plan:
    """Build a deterministic plan; raise PlacementError naming every model that cannot be placed."""
    plan = plan_partial(cfg, inv, previous)
    if plan.unplaced:
        raise PlacementError(dict(plan.unplaced), plan)
    return plan


def plan_partial(
    cfg: Config,
    inv: Inventory,
    previous: Mapping[str, str] | None = None,
    overrides: Overrides | None = None,
) -> Plan:
    """Place what can be placed; the rest lands in `plan.unplaced` with the reason.

    `overrides` are the runtime overrides in effect: a shared GPU's cap counts them too."""
    p = _Placer(cfg, inv, overrides or {})
    models = cfg.models
    for name in sorted(n for n, m in models.items() if m.slice is not None):
        p.pinned(name, models[name])
    # Keep earlier assignments that still exist and still satisfy the request.
    for name in sorted(previous or {}):
        if name in models and name not in p.plan.assignments and models[name].slice is None:
            s = inv.slice_by_uuid((previous or {})[name])
            if s is not None and p.fits(models[name], s) and p.can_take(name, s):
                p.assign(name, s)
    rest = [n for n in models if n not in p.plan.assignments and n not in p.plan.unplaced]
    by_profile = sorted(n for n in rest if models[n].profile is not None)
    by_memory = sorted(
        (n for n in rest if models[n].min_memory_gib is not None),
        key=lambda n: (-(models[n].min_memory_gib or 0), n),
    )
    anywhere = sorted(n for n in rest if n not in by_profile and n not in by_memory)
    for name in [*by_profile, *by_memory, *anywhere]:
        p.best(name, models[name])
    return p.plan
