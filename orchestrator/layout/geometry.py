"""Which sets of GPU instances one GPU can hold, placed on its 8-slot memory axis.

A layout is valid when no two instances overlap on the memory axis, each starts where its profile
may start, at most 7 compute slices are used, and no profile exceeds its instance count (so at
most one `+me`). Every valid layout of a GPU model is enumerated once (about 2,300 on A100 / H100
/ H200, including the empty one); the planner picks among them.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.gpu.mig_profiles import COMPUTE_SLICES, MEMORY_SLICES, GiProfile, GpuModel


@dataclass(frozen=True)
class Placement:
    """One GPU instance: a profile starting at a memory slot."""

    profile: GiProfile
    start: int

    @property
    def slots(self) -> range:
        return range(self.start, self.start + self.profile.memory_slices)

    @property
    def slot_text(self) -> str:
        """The memory slots as people write them: "4" or "0-3"."""
        last = self.start + self.profile.memory_slices - 1
        return str(self.start) if last == self.start else f"{self.start}-{last}"

    @property
    def key(self) -> tuple[int, int]:
        return (self.start, self.profile.id)

    @property
    def mask(self) -> int:
        """The memory slots taken, as bits."""
        return ((1 << self.profile.memory_slices) - 1) << self.start

    def __str__(self) -> str:
        return f"{self.profile.name}@{self.start}"


Layout = tuple[Placement, ...]  # sorted by start
Counts = tuple[int, ...]  # instances per profile, in the GPU model's profile order


def placements(gpu: GpuModel) -> tuple[Placement, ...]:
    """Every (profile, start) the GPU model allows, by start then profile ID."""
    return tuple(
        sorted((Placement(p, s) for p in gpu.profiles for s in p.starts), key=lambda p: p.key)
    )


def is_valid(layout: Iterable[Placement]) -> bool:
    """No overlap, starts allowed, at most 7 compute slices, instance counts respected."""
    used: set[int] = set()
    compute = 0
    count: Counter[int] = Counter()
    for p in layout:
        slots = set(p.slots)
        if p.start not in p.profile.starts or used & slots or max(slots) >= MEMORY_SLICES:
            return False
        used |= slots
        compute += p.profile.slices
        count[p.profile.id] += 1
        if count[p.profile.id] > p.profile.instances:
            return False
    return compute <= COMPUTE_SLICES


@functools.cache
def layouts(gpu: GpuModel) -> tuple[Layout, ...]:
    """Every valid layout of the GPU model (the empty one first), each exactly once."""
    options = placements(gpu)
    found: list[Layout] = []

    def extend(current: list[Placement], free_from: int, compute: int, count: Counter[int]) -> None:
        found.append(tuple(current))
        for p in options:
            pid = p.profile.id
            if (
                p.start < free_from
                or compute + p.profile.slices > COMPUTE_SLICES
                or count[pid] >= p.profile.instances
            ):
                continue
            count[pid] += 1
            current.append(p)
            extend(current, p.start + p.profile.memory_slices, compute + p.profile.slices, count)
            current.pop()
            count[pid] -= 1

    extend([], 0, 0, Counter())
    return tuple(found)


def counts(gpu: GpuModel, layout: Iterable[Placement]) -> Counts:
    """How many instances of each profile a layout has."""
    per = Counter(p.profile.id for p in layout)
    return tuple(per[p.id] for p in gpu.profiles)


def addable(gpu: GpuModel, layout: Layout) -> list[Placement]:
    """Placements that could be created next without breaking the layout."""
    used = 0
    for p in layout:
        used |= p.mask
    compute = sum(p.profile.slices for p in layout)
    count = Counter(p.profile.id for p in layout)
    return [
        p
        for p in placements(gpu)
        if not used & p.mask
        and compute + p.profile.slices <= COMPUTE_SLICES
        and count[p.profile.id] < p.profile.instances
    ]


def is_maximal(gpu: GpuModel, layout: Layout) -> bool:
    return not addable(gpu, layout)


def memory(layout: Iterable[Placement]) -> int:
    return sum(p.profile.memory_bytes for p in layout)


@functools.cache
def room_bytes(gpu: GpuModel, layout: Layout) -> int:
    """The most memory that instances added to `layout` could still have."""
    return max(
        (p.profile.memory_bytes + room_bytes(gpu, _with(layout, p)) for p in addable(gpu, layout)),
        default=0,
    )


def _with(layout: Layout, p: Placement) -> Layout:
    return tuple(sorted((*layout, p), key=lambda q: q.key))


def room(gpu: GpuModel, layout: Layout) -> Layout:
    """What could still be created: the instances adding the most memory (first such, by slot)."""
    added: list[Placement] = []
    current = layout
    while True:
        target = room_bytes(gpu, current)
        if target == 0:
            return tuple(added)
        # Among equal memory, the fewest compute slices: what is left keeps the most compute.
        candidates = sorted(addable(gpu, current), key=lambda p: (p.start, p.profile.slices))
        p = next(
            p
            for p in candidates
            if p.profile.memory_bytes + room_bytes(gpu, _with(current, p)) == target
        )
        added.append(p)
        current = _with(current, p)


@functools.cache
def best_layouts(gpu: GpuModel) -> dict[Counts, Layout]:
    """For every set of instances a GPU can hold, its placement that leaves the most room.

    Ties go to the lowest starts, so the choice never depends on enumeration order.
    """
    best: dict[Counts, tuple[tuple[int, tuple[tuple[int, int], ...]], Layout]] = {}
    for layout in layouts(gpu):
        key = counts(gpu, layout)
        score = (-room_bytes(gpu, layout), tuple(p.key for p in layout))
        if key not in best or score < best[key][0]:
            best[key] = (score, layout)
    return {key: layout for key, (_, layout) in best.items()}
