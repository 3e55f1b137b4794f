"""The exact packing search: which set of instances each GPU gets.

Models that want the same profile on every GPU model form one class; the search distributes the
class counts over GPUs. Cost, compared in order: extra GPUs beyond the host, GPUs used, and the
memory still creatable (negated). GPUs with pinned instances are searched one by one; the free
GPUs of one model are interchangeable, so for them the search only decides which instance sets
are used how often (memoised on what is left to place), which keeps a full 8-GPU class quick.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.gpu.mig_profiles import GpuModel
from orchestrator.layout import geometry

Signature = tuple[int | None, ...]  # per GPU model column: the profile index the class wants there
Fill = tuple[geometry.Counts, tuple[int, ...]]  # a GPU's instance set, and how many of each class
Cost = tuple[int, int, int]  # (extra GPUs, GPUs used, -bytes still creatable)
_Found = tuple[Cost, tuple[Fill, ...]] | None
_ZERO: Cost = (0, 0, 0)


@dataclass(frozen=True)
class Packing:
    fixed: tuple[Fill, ...]  # one per GPU with pinned instances, in order
    free: tuple[Fill, ...]  # one per free GPU, in order; an empty instance set leaves it unused
    extra: tuple[Fill, ...]  # GPUs of the spare model needed beyond the host


def _add(a: Cost, b: Cost) -> Cost:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _split(n: int, limits: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every way to write n as a sum of len(limits) parts, part k at most limits[k]."""
    if not limits:
        if n == 0:
            yield ()
        return
    for first in range(min(n, limits[0]), -1, -1):
        for rest in _split(n - first, limits[1:]):
            yield (first, *rest)


class _Search:
    def __init__(
        self,
        classes: Sequence[Signature],
        column: Mapping[str, int],
        fixed: Sequence[tuple[GpuModel, geometry.Counts]],
        free: Sequence[GpuModel],
        spare: GpuModel,
    ) -> None:
        self.classes = classes
        self.column = column
        self.fixed = fixed
        self.free = free
        self.spare = spare
        # Free GPUs all of the spare model: one unbounded pool, the first len(free) are the host's.
        self.pooled = all(m == spare for m in free)
        self.groups: list[tuple[GpuModel, int]] = []
        if not self.pooled:
            for model, members in itertools.groupby(free):
                self.groups.append((model, len(list(members))))
        self.memo: dict[tuple[object, ...], _Found] = {}

    @functools.cache  # noqa: B019 - one search object lives for one plan
    def _wanting(self, gpu: GpuModel) -> list[list[int]]:
        """Per profile of the GPU model, the classes that want it there."""
        col = self.column[gpu.key]
        return [
            [k for k, s in enumerate(self.classes) if s[col] == j] for j in range(len(gpu.profiles))
        ]

    # --- what one GPU can take ------------------------------------------------------------
    def options(
        self, gpu: GpuModel, pinned: geometry.Counts | None, remaining: tuple[int, ...]
    ) -> Iterator[tuple[Fill, Cost]]:
        """Instance sets for one GPU (containing `pinned`), fullest first, with their class fill."""
        wanting = self._wanting(gpu)
        need = [sum(remaining[k] for k in ks) for ks in wanting]
        base = pinned or (0,) * len(gpu.profiles)
        # Profiles nobody still wants (nor is pinned) rule out most sets at once.
        allowed = sum(1 << j for j, (n, b) in enumerate(zip(need, base, strict=True)) if n or b)
        for combo, mask, room in _candidates(gpu):
            if mask & ~allowed:
                continue
            extra = [c - b for c, b in zip(combo, base, strict=True)]
            if any(e < 0 or e > n for e, n in zip(extra, need, strict=True)):
                continue
            cost: Cost = (0, 1, -room)
            splits = [
                list(_split(e, [remaining[k] for k in wanting[j]])) for j, e in enumerate(extra)
            ]
            for pick in itertools.product(*splits):
                taken = [0] * len(remaining)
                for j, split in enumerate(pick):
                    for k, n in zip(wanting[j], split, strict=True):
                        taken[k] += n
                yield (combo, tuple(taken)), cost

    def _memo(self, key: tuple[object, ...], compute: Callable[[], _Found]) -> _Found:
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @staticmethod
    def _best(candidates: Iterable[tuple[tuple[Fill, ...], Cost, _Found]]) -> _Found:
        """The cheapest candidate; the first among equals, so the order of candidates decides."""
        best: _Found = None
        for fills, cost, rest in candidates:
            if rest is None:
                continue
            total = _add(cost, rest[0])
            if best is None or total < best[0]:
                best = (total, (*fills, *rest[1]))
        return best

    # --- the three stages: pinned GPUs, bounded groups of free GPUs, the spare pool ---------
    def solve(self, remaining: tuple[int, ...]) -> Packing | None:
        found = self.fixed_stage(0, remaining)
        if found is None:
            return None
        fills = found[1]
        fixed, rest = fills[: len(self.fixed)], fills[len(self.fixed) :]
        if self.pooled:
            used = [f for f in rest if any(f[0])]
            empty = [self._empty(m) for m in self.free[len(used) :]]
            return Packing(
                fixed, tuple(used[: len(self.free)] + empty), tuple(used[len(self.free) :])
            )
        free = rest[: len(self.free)]
        return Packing(fixed, free, rest[len(self.free) :])

    def _empty(self, gpu: GpuModel) -> Fill:
        return ((0,) * len(gpu.profiles), (0,) * len(self.classes))

    def fixed_stage(self, i: int, remaining: tuple[int, ...]) -> _Found:
        if i == len(self.fixed):
            return self.free_stage(0, remaining, self.groups[0][1] if self.groups else 0)
        gpu, pinned = self.fixed[i]
        return self._memo(
            ("fixed", i, remaining),
            lambda: self._best(
                ((fill,), cost, self.fixed_stage(i + 1, _minus(remaining, fill[1])))
                for fill, cost in self.options(gpu, pinned, remaining)
            ),
        )

    def free_stage(self, g: int, remaining: tuple[int, ...], left: int) -> _Found:
        """Group g of free GPUs of one model, `left` of them still open; then the next group."""
        if g == len(self.groups):
            return self.pool(remaining)
        gpu, _ = self.groups[g]

        def compute() -> _Found:
            after = self.groups[g + 1][1] if g + 1 < len(self.groups) else 0
            unused: Cost = (0, 0, -geometry.room_bytes(gpu, ()) * left)
            use = (
                ((fill,), cost, self.free_stage(g, _minus(remaining, fill[1]), left - 1))
                for fill, cost in (self.options(gpu, None, remaining) if left else ())
            )
            stop = ((self._empty(gpu),) * left, unused, self.free_stage(g + 1, remaining, after))
            return self._best(itertools.chain(use, [stop]))

        return self._memo(("free", g, remaining, left), compute)

    def pool(self, remaining: tuple[int, ...]) -> _Found:
        """Unbounded GPUs of the spare model: extra GPUs, unless the host's free ones are pooled."""
        if not any(remaining):
            return (_ZERO, ())
        extra = 0 if self.pooled else 1
        return self._memo(
            ("pool", remaining),
            lambda: self._best(
                ((fill,), (extra, 1, cost[2]), self.pool(_minus(remaining, fill[1])))
                for fill, cost in self.options(self.spare, None, remaining)
            ),
        )


def pack(
    classes: Sequence[Signature],
    remaining: tuple[int, ...],
    column: Mapping[str, int],
    fixed: Sequence[tuple[GpuModel, geometry.Counts]],
    free: Sequence[GpuModel],
    spare: GpuModel,
) -> Packing | None:
    """Place `remaining[k]` instances of each class; None if even extra GPUs cannot hold them."""
    return _Search(classes, column, fixed, free, spare).solve(remaining)


def _minus(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x - y for x, y in zip(a, b, strict=True))


@functools.cache
def _candidates(gpu: GpuModel) -> list[tuple[geometry.Counts, int, int]]:
    """Non-empty instance sets of the GPU model, fullest first: (counts, profile bits, room)."""
    combos = geometry.best_layouts(gpu)
    ordered = sorted((c for c in combos if any(c)), key=lambda c: (-geometry.memory(combos[c]), c))
    return [
        (c, sum(1 << j for j, n in enumerate(c) if n), geometry.room_bytes(gpu, combos[c]))
        for c in ordered
    ]
