"""MIG placement rules: every valid layout is enumerated once, and every maximal one is reachable.

The oracle is a brute force over every subset of at most 7 placements, checked against the
placement table as nvml-mig.md §8 gives it (written out again here, not read from the code).
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.config import parse_config
from orchestrator.gpu.mig_profiles import GPU_MODELS, GpuModel
from orchestrator.layout import geometry
from orchestrator.layout.pack import plan_layout
from orchestrator.layout.targets import synthetic

# lgip ID -> (compute slices, memory slots, max instances, allowed starts): nvml-mig.md §8.
TABLE = {
    19: (1, 1, 7, range(0, 7)),
    20: (1, 1, 1, range(0, 7)),
    15: (1, 2, 4, (0, 2, 4, 6)),
    14: (2, 2, 3, (0, 2, 4)),
    9: (3, 4, 2, (0, 4)),
    5: (4, 4, 1, (0,)),
    0: (7, 8, 1, (0,)),
}
ALL_PLACEMENTS = [(pid, start) for pid, (_, _, _, starts) in TABLE.items() for start in starts]
# What the enumeration must find on every GPU model (the geometry is the same on all five).
VALID_LAYOUTS = 2319  # including the empty layout
MAXIMAL_LAYOUTS = 239  # placed layouts to which no instance can be added
PROFILE_SETS = 128  # distinct instance multisets a GPU can hold (including none)
MAXIMAL_PROFILE_SETS = 44  # multisets no feasible multiset strictly contains


def oracle_valid(layout: tuple[tuple[int, int], ...]) -> bool:
    slots: list[int] = []
    for pid, start in layout:
        slots += range(start, start + TABLE[pid][1])
    per_id = Counter(pid for pid, _ in layout)
    return (
        len(slots) == len(set(slots))
        and max(slots, default=0) < 8
        and sum(TABLE[pid][0] for pid, _ in layout) <= 7
        and all(n <= TABLE[pid][2] for pid, n in per_id.items())
    )


@pytest.fixture(scope="module")
def oracle() -> set[frozenset[tuple[int, int]]]:
    """Every valid layout, by brute force over all subsets of up to 7 placements (~0.7M)."""
    return {
        frozenset(subset)
        for size in range(8)
        for subset in itertools.combinations(ALL_PLACEMENTS, size)
        if oracle_valid(subset)
    }


def as_ids(layout: geometry.Layout) -> frozenset[tuple[int, int]]:
    return frozenset((p.profile.id, p.start) for p in layout)


def profile_set(gpu: GpuModel, layout: geometry.Layout) -> tuple[str, ...]:
    return tuple(sorted(p.profile.name for p in layout))


@pytest.mark.parametrize("key", sorted(GPU_MODELS))
def test_every_valid_layout_is_enumerated_once(key: str, oracle: set[frozenset]) -> None:
    gpu = GPU_MODELS[key]
    found = [as_ids(layout) for layout in geometry.layouts(gpu)]
    assert len(found) == len(set(found)) == VALID_LAYOUTS
    assert set(found) == oracle
    assert all(geometry.is_valid(layout) for layout in geometry.layouts(gpu))


@pytest.mark.parametrize("key", sorted(GPU_MODELS))
def test_maximal_layouts_counted(key: str, oracle: set[frozenset]) -> None:
    gpu = GPU_MODELS[key]
    maximal = [layout for layout in geometry.layouts(gpu) if geometry.is_maximal(gpu, layout)]
    expected = {
        layout
        for layout in oracle
        if not any(oracle_valid((*layout, p)) for p in ALL_PLACEMENTS if p not in layout)
    }
    assert {as_ids(layout) for layout in maximal} == expected
    assert len(maximal) == MAXIMAL_LAYOUTS
    assert len(geometry.best_layouts(gpu)) == PROFILE_SETS


def maximal_profile_sets(gpu: GpuModel) -> list[tuple[str, ...]]:
    feasible = {profile_set(gpu, layout) for layout in geometry.layouts(gpu)}
    return sorted(
        s
        for s in feasible
        if not any(tuple(sorted((*s, p.name))) in feasible for p in gpu.profiles)
    )


def pinned_config(profiles: tuple[str, ...]) -> str:
    return "".join(
        f'[models.m{i}]\nmodel = "org/not-on-disk"\nport = {9001 + i}\nprofile = "{p}"\n'
        for i, p in enumerate(profiles)
    )


@pytest.mark.parametrize("key", sorted(GPU_MODELS))
def test_every_maximal_profile_set_is_reachable(key: str, tmp_path: Path) -> None:
    """Models pinned to the profiles of any maximal set are packed onto one GPU, validly."""
    gpu = GPU_MODELS[key]
    sets = maximal_profile_sets(gpu)
    assert len(sets) == MAXIMAL_PROFILE_SETS
    for profiles in sets:
        cfg = parse_config(pinned_config(profiles), f"{key}.toml")
        plan = plan_layout(cfg, synthetic(gpu, 1))
        (only,) = plan.gpus
        placed = tuple(p for p, _ in only.instances)
        assert plan.feasible, (profiles, plan.unplaced)
        assert profile_set(gpu, placed) == profiles
        assert oracle_valid(tuple((p.profile.id, p.start) for p in placed))
        assert sorted(name for _, name in only.instances) == sorted(cfg.models)


def test_room_left_prefers_memory_then_spare_compute() -> None:
    gpu = GPU_MODELS["a100-80gb"]
    (two_g,) = [p for p in geometry.placements(gpu) if str(p) == "2g.20gb@0"]
    room = geometry.room(gpu, (two_g,))
    # 6 free slots: the 1-compute 1g.20gb beats the 2-compute 2g.20gb for slots 2-3.
    assert [str(p) for p in room] == ["1g.20gb@2", "3g.40gb@4"]
    assert geometry.is_valid((two_g, *room))


def test_best_placement_keeps_the_most_room() -> None:
    gpu = GPU_MODELS["h100-80gb"]
    one_g = tuple(c for c in geometry.best_layouts(gpu) if sum(c) == 1 and c[0] == 1)
    (layout,) = [geometry.best_layouts(gpu)[c] for c in one_g]
    # A lone 1g at slot 0 leaves 1g + 1g.20gb + 3g creatable; at slot 6 a 3g could not start at 4.
    assert [str(p) for p in layout] == ["1g.10gb@0"]
    assert geometry.room_bytes(gpu, layout) == (9984 + 20096 + 40448) * 1024**2
