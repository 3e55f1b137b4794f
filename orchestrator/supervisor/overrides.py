"""Runtime overrides (restart --set) checked with the rules models.toml and placement apply."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from orchestrator.config import SHARED_GPU_UTILIZATION_CAP, Config, VllmSettings
from orchestrator.placement import Overrides, Plan, utilization, within_shared_cap

log = logging.getLogger(__name__)


class OverrideError(ValueError):
    """Overrides that would not make a valid engine; `errors` has one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


def _lines(prefix: str, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in (prefix, *err["loc"]) if p)
        out.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return out


def problems(cfg: Config, plan: Plan, overrides: Overrides, name: str) -> list[str]:
    """Why `overrides[name]` is not acceptable, given everyone's overrides in `overrides`."""
    own = dict(overrides.get(name) or {})
    try:
        # Alone first, so a wrong type is named as the caller wrote it (overrides.env: ...).
        VllmSettings.model_validate(own)
        cfg.effective_settings(name, own)
    except ValidationError as e:
        return _lines("overrides", e)
    slc = plan.assignments.get(name)
    tenants = plan.models_on(slc.uuid) if slc is not None else []
    if slc is None or len(tenants) < 2:
        return []
    shares = {t: utilization(cfg, t, overrides.get(t)) for t in tenants}
    if within_shared_cap(list(shares.values())):
        return []
    parts = " + ".join(f"{t} {u:g}" for t, u in shares.items())
    return [
        f"overrides.gpu_memory_utilization: {name} shares GPU {slc.gpu_index} "
        f"with {', '.join(t for t in tenants if t != name)}: {parts} = "
        f"{sum(shares.values()):.2f}, above the {SHARED_GPU_UTILIZATION_CAP} two engines on one "
        "GPU may take together"
    ]


def check(
    cfg: Config, plan: Plan, current: Overrides, name: str, overrides: Mapping[str, Any]
) -> None:
    """Raise OverrideError unless `name` may restart with `overrides` (others keep `current`)."""
    found = problems(cfg, plan, {**current, name: overrides}, name)
    if found:
        raise OverrideError(found)


def stale(cfg: Config, plan: Plan, current: Overrides) -> list[str]:
    """Overrides in effect that a new configuration would make invalid (reload refuses them)."""
    return [
        f"models.{name}: {problem} (clear it first: mig-orchestrator restart {name} "
        "--clear-overrides)"
        for name in sorted(current)
        if name in cfg.models
        for problem in problems(cfg, plan, current, name)
    ]


def usable(cfg: Config, plan: Plan, saved: Overrides) -> dict[str, dict[str, Any]]:
    """The saved overrides that are still valid; the rest are dropped with a warning."""
    kept: dict[str, dict[str, Any]] = {}
    for name in sorted(saved):
        if name not in cfg.models:
            continue
        found = problems(cfg, plan, {**kept, name: saved[name]}, name)
        if found:
            log.warning("dropping the saved overrides of %s: %s", name, "; ".join(found))
            continue
        kept[name] = dict(saved[name])
    return kept
