"""Give each model a profile and pack the instances: fewest GPUs, then the most room left.

Per model and GPU model: a `profile =` pin, else the smallest profile (by memory, then compute
slices; never the `+me` one unless pinned) whose memory x gpu_memory_utilization holds the
estimate and any `min_memory_gib`. A `slice =` pin to a GPU, and `share_gpu`, need a whole GPU
(MIG off); a pin to a MIG device keeps that instance's GPU and profile.

The rest is an exact search (search.py) over the instance sets each GPU model can hold
(geometry.best_layouts): fewest GPUs, then the most memory still creatable; among equal plans the
fuller sets come first, so the result never varies. This module turns its counts into named
placements and explains them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.config import SHARED_GPU_UTILIZATION_CAP, Config, ModelConfig
from orchestrator.gpu.inventory import GIB, Inventory
from orchestrator.gpu.mig_profiles import COMPUTE_SLICES, MEMORY_SLICES, GiProfile, GpuModel
from orchestrator.layout import checkpoint, geometry, search
from orchestrator.layout.advice import changes_to_fit
from orchestrator.layout.estimate import Estimate, EstimateError, gib
from orchestrator.layout.plan import Choice, GpuPlan, LayoutPlan, ModelPlan
from orchestrator.layout.search import Signature
from orchestrator.layout.subject import Subject, load_subject
from orchestrator.layout.targets import Target, synthetic


def _profile_order(gpu: GpuModel) -> list[GiProfile]:
    return sorted((p for p in gpu.profiles if not p.media_extensions), key=_size)


def _size(p: GiProfile) -> tuple[int, int]:
    return (p.memory_mib, p.slices)


def choose(
    m: ModelConfig, est: Estimate | None, error: str | None, gpu: GpuModel, pins: bool
) -> tuple[Choice, GiProfile | None]:
    """The profile for one model on one GPU model; also the smallest profile holding it."""
    order = _profile_order(gpu)
    smallest = None if est is None else next((p for p in order if est.fits(p.memory_bytes)), None)
    if pins and m.profile is not None:
        p = next((p for p in gpu.profiles if p.name == m.profile), None)
        if p is None:
            offered = ", ".join(q.name for q in gpu.profiles)
            why = f"profile {m.profile!r} does not exist on {gpu.label} (it has {offered})"
            if smallest is not None:
                why += f"; the estimate fits {smallest.name}"
            return Choice(None, why, pinned=True), smallest
        why = f'pinned: profile = "{p.name}"'
        if est is None:
            return Choice(p, f"{why}; no estimate ({error})", pinned=True), smallest
        usable = est.usable(p.memory_bytes)
        if est.fits(p.memory_bytes):
            why += f"; the estimate {gib(est.total)} GiB fits its {gib(usable)} GiB"
            if smallest is not None and _size(smallest) < _size(p):
                why += f" (the smallest profile holding it is {smallest.name})"
            return Choice(p, why, pinned=True), smallest
        why += f", but the estimate {gib(est.total)} GiB exceeds its {gib(usable)} GiB usable"
        return Choice(p, why, pinned=True), smallest
    floor = m.min_memory_gib if pins else None
    if est is None and floor is None:
        return Choice(None, f"no estimate: {error}"), None
    fitting = [
        p
        for p in order
        if (floor is None or p.memory_bytes >= floor * GIB)
        and (est is None or est.fits(p.memory_bytes))
    ]
    needs = [] if est is None else [f"estimate {gib(est.total)} GiB"]
    if floor is not None:
        needs.append(f"min_memory_gib = {floor:g}")
    if not fitting:
        largest = order[-1]
        usable = largest.memory_bytes if est is None else est.usable(largest.memory_bytes)
        why = f"{' and '.join(needs)}: more than {gpu.label}'s largest profile {largest.name} "
        return Choice(None, why + f"({gib(usable)} GiB usable)"), smallest
    p = fitting[0]
    util = "" if est is None else f" x {est.utilization:g} = {gib(est.usable(p.memory_bytes))} GiB"
    why = (
        f"{' and '.join(needs)}: the smallest {gpu.label} profile holding it is {p.name} "
        f"({gib(p.memory_bytes)} GiB{util})"
    )
    return Choice(p, why), smallest


@dataclass
class _Model:
    """A model's inputs to planning: per GPU model its estimate and profile choice."""

    name: str
    config: ModelConfig
    subjects: dict[str, Subject] = field(default_factory=dict)
    estimates: dict[str, Estimate] = field(default_factory=dict)
    choices: dict[str, Choice] = field(default_factory=dict)
    error: str | None = None


def _prepare(cfg: Config, targets: Sequence[Target], pins: bool) -> dict[str, _Model]:
    firsts = {t.model.key: t for t in reversed(targets)}  # one target per GPU model
    out: dict[str, _Model] = {}
    for name in sorted(cfg.models):
        mm = _Model(name, cfg.models[name])
        out[name] = mm
        for key, target in firsts.items():
            est = None
            try:
                subject = load_subject(cfg, name, target.name, target.model.memory_total_bytes)
                est = subject.estimate()
            except (checkpoint.CheckpointError, EstimateError) as e:
                mm.error = str(e)
            choice, smallest = choose(mm.config, est, mm.error, target.model, pins)
            if est is not None:
                mm.subjects[key], mm.estimates[key] = subject, est
                choice = _with_advice(choice, smallest, est, subject, target.model)
            mm.choices[key] = choice
    return out


def _with_advice(
    choice: Choice, smallest: GiProfile | None, est: Estimate, subject: Subject, gpu: GpuModel
) -> Choice:
    """The choice, with the single changes that would make the model fit where it does not."""
    if choice.profile is None:
        largest = _profile_order(gpu)[-1]
        advice = changes_to_fit(subject, largest.memory_bytes)
        return Choice(None, choice.why, choice.pinned, tuple(advice), largest.name)
    if est.fits(choice.profile.memory_bytes):
        return choice
    advice = changes_to_fit(subject, choice.profile.memory_bytes)
    if smallest is not None:
        advice.append(f'profile = "{smallest.name}"')
    return Choice(choice.profile, choice.why, choice.pinned, tuple(advice), choice.profile.name)


def plan_layout(
    cfg: Config, targets: Sequence[Target], inventory: Inventory | None = None, pins: bool = True
) -> LayoutPlan:
    """The layout for `targets`; with too few GPUs, extra ones show what the rest would need."""
    models = _prepare(cfg, targets, pins)
    assign = _Assignment(cfg, list(targets), models)
    if pins:
        for name in models:
            assign.pin(name, inventory)
    for name in models:
        if cfg.models[name].share_gpu and name not in assign.placed and name not in assign.problems:
            assign.share(name)
    return assign.result(assign.solve())


@dataclass(frozen=True)
class _Solution:
    classes: list[Signature]
    by_class: dict[Signature, list[str]]
    fills: dict[int, search.Fill]  # target position -> its instance set and classes


class _Assignment:
    """Pins and whole GPUs first, then the search for the rest; builds the LayoutPlan."""

    def __init__(self, cfg: Config, targets: list[Target], models: dict[str, _Model]) -> None:
        self.cfg = cfg
        self.targets = targets
        self.available = len(targets)
        self.models = models
        self.keys = sorted({t.model.key for t in targets})
        self.whole: dict[int, list[str]] = {}  # target position -> models on the whole GPU
        self.pinned: dict[int, list[tuple[str, int]]] = {}  # position -> (model, profile index)
        self.placed: set[str] = set()
        self.problems: dict[str, str] = {}

    def _position(self, pin: str) -> int | None:
        for i, t in enumerate(self.targets):
            if (pin.isdigit() and t.index == int(pin)) or t.uuid == pin:
                return i
        return None

    def pin(self, name: str, inventory: Inventory | None) -> None:
        """A `slice =` pin: a whole GPU, or the GPU and profile of an existing MIG device."""
        pin = self.models[name].config.slice
        if pin is None:
            return
        text = str(pin)
        if text.isdigit() or text.startswith("GPU-"):
            pos = self._position(text)
            if pos is None:
                self.problems[name] = f"slice = {text!r}: no such GPU among those planned"
            else:
                self._take_whole(name, pos)
            return
        found = inventory.slice_by_uuid(text) if inventory is not None else None
        pos = None if found is None else self._position(str(found.gpu_index))
        if found is None or pos is None:
            where = "on this host" if inventory is not None else "without the real GPUs"
            self.problems[name] = f"slice = {text!r}: no such MIG device {where}"
            return
        names = [p.name for p in self.targets[pos].model.profiles]
        if found.profile not in names:
            self.problems[name] = f"slice = {text!r}: a {found.profile} cannot be planned"
        elif pos in self.whole:
            self.problems[name] = f"slice = {text!r}: GPU{found.gpu_index} is planned MIG off"
        else:
            self.pinned.setdefault(pos, []).append((name, names.index(str(found.profile))))
            self.placed.add(name)

    def _take_whole(self, name: str, pos: int) -> None:
        tenants = self.whole.setdefault(pos, [])
        everyone = [*tenants, name]
        if len(everyone) > 1 and not all(self.cfg.models[n].share_gpu for n in everyone):
            self.problems[name] = (
                f"GPU{self.targets[pos].index} is also pinned by {', '.join(tenants)}; "
                "only share_gpu models may share a whole GPU"
            )
            return
        if pos in self.pinned:
            self.problems[name] = f"GPU{self.targets[pos].index} also holds a pinned MIG device"
            return
        tenants.append(name)
        self.placed.add(name)

    def _util(self, name: str) -> float:
        return self.cfg.effective_settings(name).gpu_memory_utilization or 1.0

    def share(self, name: str) -> None:
        """A share_gpu model joins a whole GPU with utilisation to spare, or takes the last GPU."""
        for pos, tenants in sorted(self.whole.items()):
            total = sum(self._util(n) for n in [*tenants, name])
            if all(self.cfg.models[n].share_gpu for n in tenants) and (
                total <= SHARED_GPU_UTILIZATION_CAP + 1e-9
            ):
                self._take_whole(name, pos)
                return
        free = [i for i in range(len(self.targets)) if i not in self.whole and i not in self.pinned]
        if not free:
            self.problems[name] = "share_gpu needs a whole GPU and none is left"
            return
        self._take_whole(name, free[-1])

    def _signature(self, name: str) -> Signature:
        choices = self.models[name].choices
        out: list[int | None] = []
        for key in self.keys:
            p = choices[key].profile
            gpu = next(t.model for t in self.targets if t.model.key == key)
            out.append(None if p is None else gpu.profiles.index(p))
        return tuple(out)

    def solve(self) -> _Solution:
        """Classes of interchangeable models, and where the exact search puts them."""
        by_class: dict[Signature, list[str]] = {}
        for name in sorted(self.models):
            if name in self.placed or name in self.problems:
                continue
            sig = self._signature(name)
            if all(j is None for j in sig):
                self.problems[name] = self.models[name].choices[self.keys[0]].why
                continue
            by_class.setdefault(sig, []).append(name)
        classes = sorted(by_class, key=lambda s: tuple(-1 if j is None else j for j in s))
        fixed = sorted(self.pinned)
        free = [i for i in range(len(self.targets)) if i not in self.whole and i not in self.pinned]
        models = [self.targets[i].model for i in free]
        spare = (
            models[0]
            if models and all(m == models[0] for m in models)
            else max((t.model for t in self.targets), key=lambda m: m.memory_total_mib)
        )
        packing = search.pack(
            classes,
            tuple(len(by_class[c]) for c in classes),
            {key: i for i, key in enumerate(self.keys)},
            [(self.targets[i].model, self._pinned_counts(i)) for i in fixed],
            models,
            spare,
        )
        fills: dict[int, search.Fill] = {}
        if packing is not None:
            fills = dict(zip(fixed, packing.fixed, strict=True))
            fills.update(zip(free, packing.free, strict=True))
            first = max(t.index for t in self.targets) + 1
            for n, fill in enumerate(packing.extra):
                self.targets.append(synthetic(spare, 1, first + n, extra=True)[0])
                fills[len(self.targets) - 1] = fill
        return _Solution(classes, by_class, fills)

    def _pinned_counts(self, pos: int) -> geometry.Counts:
        gpu = self.targets[pos].model
        pins = [j for _, j in self.pinned[pos]]
        return tuple(pins.count(j) for j in range(len(gpu.profiles)))

    def result(self, solution: _Solution) -> LayoutPlan:
        plans: dict[str, ModelPlan] = {}
        queues = {c: list(names) for c, names in solution.by_class.items()}
        gpus = [
            self._gpu(pos, solution.fills.get(pos), solution.classes, queues, plans)
            for pos in range(len(self.targets))
        ]
        for name in sorted(self.models):
            if name not in plans:
                mm = self.models[name]
                key = self.keys[0]
                plans[name] = ModelPlan(
                    name,
                    estimate=mm.estimates.get(key),
                    choice=mm.choices.get(key),
                    problem=self.problems.get(name) or mm.error or "no GPU can hold it",
                )
        plan = LayoutPlan(gpus, dict(sorted(plans.items())), self.available)
        _explain(plan, self.models)
        return plan

    def _gpu(
        self,
        pos: int,
        fill: search.Fill | None,
        classes: list[Signature],
        queues: dict[Signature, list[str]],
        plans: dict[str, ModelPlan],
    ) -> GpuPlan:
        target = self.targets[pos]
        if pos in self.whole:
            for name in self.whole[pos]:
                plans[name] = self._model_plan(name, target)
            return GpuPlan(target, mig=False, whole_models=tuple(self.whole[pos]))
        if fill is None or not any(fill[0]):
            return GpuPlan(target, mig=False)
        combo, taken = fill
        wanting: dict[int, list[str]] = {}
        for name, j in sorted(self.pinned.get(pos, [])):
            wanting.setdefault(j, []).append(name)
        column = self.keys.index(target.model.key)
        for c, n in zip(classes, taken, strict=True):
            wanted = c[column]
            if n and wanted is not None:
                wanting.setdefault(wanted, []).extend(queues[c].pop(0) for _ in range(n))
        layout = geometry.best_layouts(target.model)[combo]
        instances = []
        for placement in layout:
            name = wanting[target.model.profiles.index(placement.profile)].pop(0)
            instances.append((placement, name))
            plans[name] = self._model_plan(name, target, placement)
        room = geometry.room(target.model, layout)
        return GpuPlan(target, mig=True, instances=tuple(instances), room=room)

    def _model_plan(
        self, name: str, target: Target, placement: geometry.Placement | None = None
    ) -> ModelPlan:
        mm = self.models[name]
        key = target.model.key
        est = mm.estimates.get(key)
        choice = mm.choices.get(key)
        if placement is None:  # a whole GPU: the MIG profile choice does not apply
            choice = Choice(None, _whole_why(mm.config, est, target), pinned=True)
        return ModelPlan(
            name,
            gpu=target.index,
            placement=placement,
            estimate=est,
            choice=choice,
            problem=mm.error,
        )


def _whole_why(m: ModelConfig, est: Estimate | None, target: Target) -> str:
    why = (
        f"pinned: slice = {m.slice!r}, a whole GPU (MIG off)"
        if m.slice is not None
        else "share_gpu: a whole GPU (MIG off) shared while utilisations sum to at most "
        f"{SHARED_GPU_UTILIZATION_CAP}"
    )
    if est is None:
        return why
    usable = est.usable(target.model.memory_total_bytes)
    verdict = "fits" if est.total <= usable else "exceeds"
    return f"{why}; the estimate {gib(est.total)} GiB {verdict} its {gib(usable)} GiB share"


def _explain(plan: LayoutPlan, models: Mapping[str, _Model]) -> None:
    """Reasons for the GPU count, and advice where something does not fit."""
    mig = [g for g in plan.gpus if g.mig and g.used]
    whole = [g for g in plan.gpus if not g.mig and g.used]
    if mig:
        slots = sum(p.profile.memory_slices for g in mig for p, _ in g.instances)
        compute = sum(p.profile.slices for g in mig for p, _ in g.instances)
        bound = max(-(-slots // MEMORY_SLICES), -(-compute // COMPUTE_SLICES))
        line = (
            f"{len(mig)} GPU(s) with MIG: the instances take {slots} memory slots and {compute} "
            f"compute slices ({MEMORY_SLICES} and {COMPUTE_SLICES} per GPU)"
        )
        media = sum(p.profile.name.endswith("+me") for g in mig for p, _ in g.instances)
        if len(mig) > bound and media >= len(mig):
            line += (
                f"; {media} media-extension (+me) instances, and a GPU holds at most one "
                "(NVIDIA MIG user guide, supported profiles)"
            )
        elif len(mig) > bound:
            line += "; where instances may start rules out fewer (every valid layout was tried)"
        elif bound > 1:
            line += f"; fewer than {bound} GPUs cannot hold that much"
        plan.reasons.append(line)
    if whole:
        names = ", ".join(n for g in whole for n in g.whole_models)
        plan.reasons.append(f"{len(whole)} whole GPU(s) with MIG off for {names}")
    used = sum(1 for g in plan.gpus if g.used)
    if used > plan.available:
        plan.advice.append(
            f"needs {used} GPUs, {plan.available} available: the extra GPU(s) show what the rest "
            "would need"
        )
    for name, mp in sorted(plan.models.items()):
        choice = mp.choice
        if choice is not None and choice.advice:
            changes = "; or ".join(choice.advice)
            plan.advice.append(f"{name} would fit {choice.advice_for} with: {changes}")
    if used > plan.available:
        plan.advice += _shrink(plan, models)


def _shrink(plan: LayoutPlan, models: Mapping[str, _Model]) -> list[str]:
    """Models that would drop to the next smaller profile, and with which change."""
    out = []
    for name, mp in sorted(plan.models.items()):
        if mp.placement is None or mp.choice is None or mp.choice.pinned:
            continue
        gpu = next(g.target.model for g in plan.gpus if g.target.index == mp.gpu)
        order = _profile_order(gpu)
        smaller = [p for p in order if p.memory_mib < mp.placement.profile.memory_mib]
        subject = models[name].subjects.get(gpu.key)
        if not smaller or subject is None:
            continue
        # The next size down, with the fewest compute slices of that size.
        target = max(smaller, key=lambda p: (p.memory_mib, -p.slices))
        changes = changes_to_fit(subject, target.memory_bytes)
        if changes:
            out.append(f"{name} would fit {target.name} with: {'; or '.join(changes)}")
    return out
