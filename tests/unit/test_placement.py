"""Model → slice placement against hand-built inventories (and shipped topologies when present)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.config import Config, parse_config
from orchestrator.gpu.inventory import Gpu, Inventory, Slice
from orchestrator.gpu.nvml import load_inventory
from orchestrator.placement import PlacementError, Plan, place, plan_partial
from orchestrator.units import GIB

TOPOLOGIES = sorted(
    (Path(__file__).resolve().parents[2] / "orchestrator" / "gpu" / "topologies").glob("*.toml")
)


def mig(gpu: int, gi: int, profile: str, gib: float) -> Slice:
    return Slice(
        uuid=f"MIG-{gpu}-{gi}",
        gpu_index=gpu,
        gpu_uuid=f"GPU-{gpu}",
        gpu_name="NVIDIA H100 80GB HBM3",
        profile=profile,
        memory_total_bytes=int(gib * GIB),
        gi_id=gi,
        ci_id=0,
    )


def whole(gpu: int, gib: float = 79.6) -> Gpu:
    s = Slice(
        uuid=f"GPU-{gpu}",
        gpu_index=gpu,
        gpu_uuid=f"GPU-{gpu}",
        gpu_name="NVIDIA H100 80GB HBM3",
        profile=None,
        memory_total_bytes=int(gib * GIB),
    )
    return Gpu(gpu, s.uuid, s.gpu_name, s.memory_total_bytes, 0, False, (s,))


def mig_gpu(gpu: int, *slices: Slice) -> Gpu:
    return Gpu(gpu, f"GPU-{gpu}", "NVIDIA H100 80GB HBM3", int(79.6 * GIB), 0, True, slices)


def inventory(*gpus: Gpu) -> Inventory:
    return Inventory(gpus=gpus, source="test")


# GPU0: split 3g.40gb + 2g.20gb + 1g.10gb + 1g.10gb; GPU1: MIG off.
MIXED = inventory(
    mig_gpu(
        0,
        mig(0, 1, "3g.40gb", 39.5),
        mig(0, 3, "2g.20gb", 19.6),
        mig(0, 9, "1g.10gb", 9.8),
        mig(0, 10, "1g.10gb", 9.8),
    ),
    whole(1),
)


def config(models: dict[str, str], defaults: str = "") -> Config:
    """Models from {name: extra TOML lines}; ports are assigned in insertion order."""
    text = f"[defaults]\n{defaults}\n"
    for i, (name, extra) in enumerate(models.items()):
        text += f'[models.{name}]\nmodel = "m"\nport = {8001 + i}\n{extra}\n'
    return parse_config(text, "models.toml")


def where(plan: Plan) -> dict[str, str]:
    return {name: s.uuid for name, s in sorted(plan.assignments.items())}


# ----- pins -----


def test_pin_mig_uuid_gpu_uuid_and_gpu_index() -> None:
    inv = inventory(
        mig_gpu(0, mig(0, 1, "3g.40gb", 39.5), mig(0, 2, "3g.40gb", 39.5)), whole(1), whole(2)
    )
    cfg = config(
        {
            "by-mig": 'slice = "MIG-0-2"',
            "by-uuid": 'slice = "GPU-2"',
            "by-index": "slice = 1",
        }
    )
    assert where(place(cfg, inv)) == {"by-index": "GPU-1", "by-mig": "MIG-0-2", "by-uuid": "GPU-2"}


def test_pin_gpu_index_given_as_string() -> None:
    assert where(place(config({"a": 'slice = "1"'}), MIXED)) == {"a": "GPU-1"}


def test_pin_gpu_index_on_mig_enabled_gpu_is_a_clear_error() -> None:
    plan = plan_partial(config({"a": "slice = 0"}), MIXED)
    assert plan.assignments == {}
    assert plan.unplaced == {
        "a": "GPU 0 has MIG enabled: pin one of its MIG UUIDs or ask for a profile"
    }


def test_pin_gpu_index_on_mig_enabled_gpu_without_mig_devices() -> None:
    # MIG mode on but no instances created yet: the GPU exists, it just offers no slice.
    inv = inventory(mig_gpu(0), whole(1))
    plan = plan_partial(config({"a": "slice = 0"}), inv)
    assert plan.unplaced == {
        "a": "GPU 0 has MIG enabled: pin one of its MIG UUIDs or ask for a profile"
    }


def test_pin_gpu_uuid_of_mig_enabled_gpu_is_a_clear_error() -> None:
    plan = plan_partial(config({"a": 'slice = "GPU-0"'}), MIXED)
    assert plan.unplaced == {
        "a": "GPU 0 has MIG enabled: pin one of its MIG UUIDs or ask for a profile"
    }


def test_pin_to_missing_gpu_or_slice() -> None:
    plan = plan_partial(config({"a": "slice = 7", "b": 'slice = "MIG-nope"'}), MIXED)
    assert plan.unplaced == {
        "a": "there is no GPU 7",
        "b": "slice MIG-nope does not exist on this host",
    }


def test_two_pins_on_one_slice() -> None:
    plan = plan_partial(config({"b": 'slice = "MIG-0-1"', "a": 'slice = "MIG-0-1"'}), MIXED)
    # Pins are taken in name order, so the outcome does not depend on the file's order.
    assert where(plan) == {"a": "MIG-0-1"}
    assert plan.unplaced == {"b": "needs slice MIG-0-1: it is taken by a"}


def test_pins_win_over_requests() -> None:
    # "a" sorts first and asks for any 3g.40gb, but the only one is pinned by "z".
    plan = plan_partial(config({"a": 'profile = "3g.40gb"', "z": 'slice = "MIG-0-1"'}), MIXED)
    assert where(plan) == {"z": "MIG-0-1"}
    assert plan.unplaced == {"a": "needs 3g.40gb: it is taken by z"}


# ----- profile and memory requests -----


def test_profile_request_takes_a_slice_of_that_profile() -> None:
    plan = place(config({"a": 'profile = "1g.10gb"', "b": 'profile = "1g.10gb"'}), MIXED)
    assert where(plan) == {"a": "MIG-0-9", "b": "MIG-0-10"}


def test_profile_that_does_not_exist() -> None:
    plan = plan_partial(config({"a": 'profile = "4g.40gb"'}), MIXED)
    assert plan.unplaced == {
        "a": "needs 4g.40gb: no such slice on this host "
        "(there are: 1g.10gb, 2g.20gb, 3g.40gb, whole GPU)"
    }


def test_profile_taken_names_every_holder() -> None:
    inv = inventory(mig_gpu(0, mig(0, 1, "3g.40gb", 39.5), mig(0, 2, "3g.40gb", 39.5)))
    cfg = config({n: 'profile = "3g.40gb"' for n in ("student-a", "student-b", "student-c")})
    with pytest.raises(PlacementError) as info:
        place(cfg, inv)
    assert info.value.problems == {
        "student-c": "needs 3g.40gb: both are taken by student-a, student-b"
    }
    assert str(info.value) == "student-c: needs 3g.40gb: both are taken by student-a, student-b"


def test_memory_request_is_best_fit() -> None:
    plan = place(config({"a": "min_memory_gib = 15"}), MIXED)
    assert where(plan) == {"a": "MIG-0-3"}  # the 2g.20gb, not the 3g.40gb or the whole GPU


def test_memory_request_larger_than_every_slice() -> None:
    plan = plan_partial(config({"a": "min_memory_gib = 100"}), MIXED)
    assert plan.unplaced == {
        "a": "needs >= 100 GiB: no such slice on this host "
        "(there are: 1g.10gb, 2g.20gb, 3g.40gb, whole GPU)"
    }


def test_memory_requests_are_placed_largest_first() -> None:
    inv = inventory(mig_gpu(0, mig(0, 1, "3g.40gb", 30), mig(0, 2, "4g.40gb", 50)))
    # Smallest first would give "small" the 30 GiB slice; largest first gives it "large".
    plan = place(config({"small": "min_memory_gib = 25", "large": "min_memory_gib = 28"}), inv)
    assert where(plan) == {"large": "MIG-0-1", "small": "MIG-0-2"}


def test_requests_are_served_before_unconstrained_models() -> None:
    inv = inventory(mig_gpu(0, mig(0, 1, "3g.40gb", 39.5), mig(0, 2, "2g.20gb", 19.6)))
    # "a" would grab the 3g.40gb if it went first; "z" needs it.
    plan = place(config({"a": "", "z": "min_memory_gib = 30"}), inv)
    assert where(plan) == {"a": "MIG-0-2", "z": "MIG-0-1"}


def test_unconstrained_models_take_the_largest_remaining_slice() -> None:
    plan = place(config({"a": "", "b": "", "c": ""}), MIXED)
    assert where(plan) == {"a": "GPU-1", "b": "MIG-0-1", "c": "MIG-0-3"}


def test_unconstrained_model_when_nothing_is_left() -> None:
    inv = inventory(whole(0))
    plan = plan_partial(config({"a": "", "b": ""}), inv)
    assert where(plan) == {"a": "GPU-0"}
    assert plan.unplaced == {"b": "needs any free slice: it is taken by a"}


def test_infeasible_plan_names_every_unplaceable_model() -> None:
    inv = inventory(mig_gpu(0, mig(0, 1, "3g.40gb", 39.5)))
    cfg = config(
        {
            "ok": 'profile = "3g.40gb"',
            "late": 'profile = "3g.40gb"',
            "huge": "min_memory_gib = 60",
            "ghost": 'slice = "MIG-gone"',
            "anyone": "",
        }
    )
    with pytest.raises(PlacementError) as info:
        place(cfg, inv)
    err = info.value
    assert err.problems == {
        "anyone": "needs any free slice: it is taken by late",
        "ghost": "slice MIG-gone does not exist on this host",
        "huge": "needs >= 60 GiB: no such slice on this host (there are: 3g.40gb)",
        "ok": "needs 3g.40gb: it is taken by late",
    }
    assert str(err).splitlines() == [f"{m}: {why}" for m, why in sorted(err.problems.items())]
    # The partial plan travels with the error, for --allow-partial.
    assert where(err.plan) == {"late": "MIG-0-1"}
    partial = plan_partial(cfg, inv)
    assert where(partial) == where(err.plan)
    assert partial.unplaced == err.problems


# ----- determinism and stability -----


def test_same_input_same_plan_regardless_of_order() -> None:
    models = {
        "p1": 'profile = "1g.10gb"',
        "p2": 'profile = "1g.10gb"',
        "m1": "min_memory_gib = 12",
        "any1": "",
        "any2": "",
        "pin": 'slice = "GPU-1"',
    }
    gpus = (*MIXED.gpus, whole(2))
    expected = {
        "any1": "GPU-2",
        "any2": "MIG-0-1",
        "m1": "MIG-0-3",
        "p1": "MIG-0-9",
        "p2": "MIG-0-10",
        "pin": "GPU-1",
    }
    assert where(place(config(models), inventory(*gpus))) == expected
    rng = random.Random(7)
    for _ in range(20):
        names = rng.sample(list(models), len(models))
        shuffled = [replace(g, slices=tuple(rng.sample(g.slices, len(g.slices)))) for g in gpus]
        rng.shuffle(shuffled)
        cfg = config({n: models[n] for n in names})
        assert where(place(cfg, inventory(*shuffled))) == expected


def test_previous_assignment_is_kept_even_if_a_better_slice_exists() -> None:
    cfg = config({"a": ""})
    assert where(place(cfg, MIXED)) == {"a": "GPU-1"}
    assert where(place(cfg, MIXED, previous={"a": "MIG-0-9"})) == {"a": "MIG-0-9"}


def test_previous_assignment_dropped_when_the_slice_vanished() -> None:
    cfg = config({"a": ""})
    assert where(place(cfg, MIXED, previous={"a": "MIG-9-9"})) == {"a": "GPU-1"}


def test_previous_assignment_dropped_when_it_no_longer_fits() -> None:
    cfg = config({"a": 'profile = "2g.20gb"', "b": "min_memory_gib = 30"})
    plan = place(cfg, MIXED, previous={"a": "MIG-0-9", "b": "MIG-0-10"})
    assert where(plan) == {"a": "MIG-0-3", "b": "MIG-0-1"}


def test_previous_assignment_yields_to_a_pin() -> None:
    cfg = config({"a": "", "b": 'slice = "MIG-0-1"'})
    plan = place(cfg, MIXED, previous={"a": "MIG-0-1"})
    assert where(plan) == {"a": "GPU-1", "b": "MIG-0-1"}


def test_previous_assignments_of_removed_models_are_ignored() -> None:
    cfg = config({"a": ""})
    assert where(place(cfg, MIXED, previous={"gone": "GPU-1", "a": "MIG-0-3"})) == {"a": "MIG-0-3"}


def test_previous_assignment_is_not_shared_with_a_model_that_wont_share() -> None:
    cfg = config({"a": "", "b": ""})
    plan = place(cfg, MIXED, previous={"a": "GPU-1", "b": "GPU-1"})
    assert where(plan) == {"a": "GPU-1", "b": "MIG-0-1"}


# ----- sharing a whole GPU -----

SHARE = "share_gpu = true\ngpu_memory_utilization = {}"


def test_two_opted_in_models_share_one_gpu_within_the_cap() -> None:
    inv = inventory(whole(0))
    plan = place(config({"a": SHARE.format(0.45), "b": SHARE.format(0.5)}), inv)
    assert where(plan) == {"a": "GPU-0", "b": "GPU-0"}
    assert plan.models_on("GPU-0") == ["a", "b"]


def test_sharing_refused_above_the_cap() -> None:
    inv = inventory(whole(0))
    plan = plan_partial(config({"a": SHARE.format(0.5), "b": SHARE.format(0.5)}), inv)
    assert where(plan) == {"a": "GPU-0"}
    assert plan.unplaced == {"b": "needs any free slice: it is taken by a"}


def test_sharing_needs_both_to_opt_in() -> None:
    inv = inventory(whole(0))
    cfg = config(
        {"a": "gpu_memory_utilization = 0.3", "b": SHARE.format(0.3)},
    )
    plan = plan_partial(cfg, inv)
    assert where(plan) == {"a": "GPU-0"}
    assert "b" in plan.unplaced


def test_sharing_with_utilization_from_defaults() -> None:
    inv = inventory(whole(0))
    cfg = config(
        {"a": "share_gpu = true", "b": "share_gpu = true"}, defaults="gpu_memory_utilization = 0.45"
    )
    assert where(place(cfg, inv)) == {"a": "GPU-0", "b": "GPU-0"}


def test_sharing_a_pinned_gpu() -> None:
    inv = inventory(whole(0), whole(1))
    pin = "slice = 1\nshare_gpu = true\ngpu_memory_utilization = 0.4"
    assert where(place(config({"a": pin, "b": pin}), inv)) == {"a": "GPU-1", "b": "GPU-1"}


def test_never_share_a_mig_slice() -> None:
    inv = inventory(mig_gpu(0, mig(0, 1, "3g.40gb", 39.5)))
    pin = 'slice = "MIG-0-1"\nshare_gpu = true\ngpu_memory_utilization = 0.3'
    mem = "min_memory_gib = 10\nshare_gpu = true\ngpu_memory_utilization = 0.3"
    plan = plan_partial(config({"a": pin, "b": pin, "c": mem}), inv)
    assert where(plan) == {"a": "MIG-0-1"}
    assert plan.unplaced == {
        "b": "needs slice MIG-0-1: it is taken by a",
        "c": "needs >= 10 GiB: it is taken by a",
    }


def test_sharers_pack_so_a_whole_gpu_stays_free_for_a_model_that_wont_share() -> None:
    inv = inventory(whole(0), whole(1))
    cfg = config({"a": SHARE.format(0.45), "b": SHARE.format(0.45), "c": ""})
    assert where(place(cfg, inv)) == {"a": "GPU-0", "b": "GPU-0", "c": "GPU-1"}


# ----- shipped topologies -----


@pytest.mark.skipif(not TOPOLOGIES, reason="no topology files shipped yet")
@pytest.mark.parametrize("topology", TOPOLOGIES, ids=lambda p: p.stem)
def test_one_unconstrained_model_per_slice_on_shipped_topologies(topology: Path) -> None:
    inv = load_inventory(topology)
    slices = inv.slices
    assert slices, topology
    cfg = config({f"s{i:02d}": "" for i in range(len(slices))})
    plan = place(cfg, inv)
    # Every slice gets exactly one model, and the biggest slices go to the first names.
    assert sorted(s.uuid for s in plan.assignments.values()) == sorted(s.uuid for s in slices)
    sizes = [plan.assignments[n].memory_total_bytes for n in sorted(plan.assignments)]
    assert sizes == sorted(sizes, reverse=True)
    extra = config({f"s{i:02d}": "" for i in range(len(slices) + 1)})
    with pytest.raises(PlacementError) as info:
        place(extra, inv)
    assert list(info.value.problems) == [f"s{len(slices):02d}"]


@pytest.mark.skipif(not TOPOLOGIES, reason="no topology files shipped yet")
@pytest.mark.parametrize("topology", TOPOLOGIES, ids=lambda p: p.stem)
def test_every_profile_of_shipped_topologies_can_be_requested(topology: Path) -> None:
    inv = load_inventory(topology)
    profiles = [s.profile for s in inv.slices if s.profile is not None]
    if not profiles:
        pytest.skip(f"{topology.name} has no MIG slices")
    cfg = config({f"p{i:02d}": f'profile = "{p}"' for i, p in enumerate(profiles)})
    plan = place(cfg, inv)
    assert {n: s.profile for n, s in plan.assignments.items()} == {
        f"p{i:02d}": p for i, p in enumerate(profiles)
    }
