"""A MIG layout plan: per GPU the instances to create, per model where it lands and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.gpu.mig_profiles import GiProfile
from orchestrator.layout import geometry
from orchestrator.layout.estimate import Estimate
from orchestrator.layout.targets import Target


@dataclass(frozen=True)
class Choice:
    """The profile one model gets on one GPU model, and why."""

    profile: GiProfile | None  # None: no profile of this GPU model will do
    why: str
    pinned: bool = False
    advice: tuple[str, ...] = ()  # single changes after which it fits `advice_for`
    advice_for: str = ""


@dataclass(frozen=True)
class GpuPlan:
    target: Target
    mig: bool  # False: MIG off, the whole GPU is one slice
    instances: tuple[tuple[geometry.Placement, str], ...] = ()
    whole_models: tuple[str, ...] = ()
    room: geometry.Layout = ()  # what could still be created on it

    @property
    def used(self) -> bool:
        return bool(self.instances or self.whole_models)


@dataclass(frozen=True)
class ModelPlan:
    """Where one model lands, with the estimate and choice for that GPU's model."""

    name: str
    gpu: int | None = None
    placement: geometry.Placement | None = None
    estimate: Estimate | None = None
    choice: Choice | None = None
    problem: str | None = None  # why it has no estimate, or why it is not placed


@dataclass
class LayoutPlan:
    gpus: list[GpuPlan]
    models: dict[str, ModelPlan]
    available: int  # GPUs on the host (or --gpus); more in `gpus` are extra, to show the need
    notes: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why this many GPUs

    @property
    def feasible(self) -> bool:
        return not self.unplaced and not any(g.target.extra and g.used for g in self.gpus)

    @property
    def unplaced(self) -> dict[str, str]:
        return {n: m.problem or "not placed" for n, m in self.models.items() if m.gpu is None}
