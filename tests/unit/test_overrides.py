"""Runtime overrides are judged as models.toml and placement judge the same settings."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from orchestrator.config import Config, parse_config
from orchestrator.gpu.inventory import Gpu, Inventory, Slice
from orchestrator.placement import plan_partial
from orchestrator.supervisor import overrides as ov
from orchestrator.units import GIB

# One whole (non-MIG) GPU: both sharers land on it, at 0.45 each (0.90 of the 0.95 cap).
GPU = Slice(
    uuid="GPU-0",
    gpu_index=0,
    gpu_uuid="GPU-0",
    gpu_name="NVIDIA H100 80GB HBM3",
    profile=None,
    memory_total_bytes=80 * GIB,
)
INVENTORY = Inventory(gpus=(Gpu(0, "GPU-0", GPU.gpu_name, 80 * GIB, 0, False, (GPU,)),), source="t")
SHARED = """
[defaults]
gpu_memory_utilization = 0.45
env = {{ HF_HOME = "/srv/hf" }}
[models.alice]
model = "m"
port = 8001
share_gpu = true
{alice}
[models.bob]
model = "m"
port = 8002
share_gpu = true
"""


def setup(alice: str = "") -> tuple[Config, Any]:
    cfg = parse_config(SHARED.format(alice=alice))
    plan = plan_partial(cfg, INVENTORY)
    assert plan.models_on("GPU-0") == ["alice", "bob"]
    return cfg, plan


def refused(overrides: dict[str, Any], current: dict[str, Any] | None = None) -> list[str]:
    cfg, plan = setup()
    with pytest.raises(ov.OverrideError) as info:
        ov.check(cfg, plan, current or {}, "alice", overrides)
    return info.value.errors


def test_override_past_the_shared_gpu_cap_is_refused() -> None:
    # Regression: 0.95 on a share_gpu model was accepted, putting the GPU at 1.40.
    (err,) = refused({"gpu_memory_utilization": 0.95})
    assert err.startswith("overrides.gpu_memory_utilization: alice shares GPU 0 with bob: ")
    assert "alice 0.95 + bob 0.45 = 1.40, above the 0.95" in err


def test_the_other_tenants_overrides_count_too() -> None:
    (err,) = refused({"gpu_memory_utilization": 0.45}, {"bob": {"gpu_memory_utilization": 0.6}})
    assert "alice 0.45 + bob 0.6 = 1.05" in err


def test_override_within_the_cap_is_accepted() -> None:
    cfg, plan = setup()
    ov.check(cfg, plan, {}, "alice", {"gpu_memory_utilization": 0.5})


@pytest.mark.parametrize("env", ["HF_TOKEN=x", ["A=1"], 3, True])
def test_env_of_the_wrong_type_is_a_clear_error(env: Any) -> None:
    # Regression: a string, list or number answered 500 from the settings merge.
    (err,) = refused({"env": env})
    assert err.startswith("overrides.env: Input should be a valid dictionary")


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            {"extra_args": ["x" * (10 * 1024 * 1024)]},
            "overrides.extra_args: item 0: 10485760 bytes",
        ),
        ({"max_model_len": "512"}, "overrides.max_model_len: Input should be a valid integer"),
        ({"enable_prefix_caching": 0}, "overrides.enable_prefix_caching: Input should be a valid"),
        ({"served_model_name": "x"}, "overrides.served_model_name: Extra inputs are not permitted"),
        ({"gpu_memory_utilization": 1.5}, "overrides.gpu_memory_utilization: Input should be less"),
    ],
)
def test_values_that_could_only_fail_at_spawn_are_refused(
    overrides: dict[str, Any], says: str
) -> None:
    assert refused(overrides)[0].startswith(says)


def test_merged_environment_over_the_exec_cap_is_refused() -> None:
    # Each alone is under 256 KiB; the engine would get both.
    cfg, plan = setup(alice='env = { A = "' + "a" * 60_000 + '", B = "' + "b" * 60_000 + '" }')
    big = {"env": {f"O{i}": "o" * 60_000 for i in range(3)}}
    with pytest.raises(ov.OverrideError) as info:
        ov.check(cfg, plan, {}, "alice", big)
    assert info.value.errors[0].startswith("overrides: extra_args and env take")


def test_saved_overrides_that_became_invalid_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    cfg, plan = setup()
    saved = {
        "alice": {"gpu_memory_utilization": 0.5},  # fits: 0.50 + 0.45
        "bob": {"gpu_memory_utilization": 0.5},  # with alice's kept 0.5: 1.00
        "gone": {"max_num_seqs": 4},  # no longer in models.toml
    }
    with caplog.at_level(logging.WARNING):
        assert ov.usable(cfg, plan, saved) == {"alice": {"gpu_memory_utilization": 0.5}}
    assert "dropping the saved overrides of bob" in caplog.text


def test_a_reload_that_would_invalidate_overrides_in_effect_names_them() -> None:
    cfg, plan = setup(alice="gpu_memory_utilization = 0.5")
    current = {"bob": {"gpu_memory_utilization": 0.5}}
    (err,) = ov.stale(cfg, plan, current)
    assert err.startswith("models.bob: overrides.gpu_memory_utilization: bob shares GPU 0")
    assert err.endswith("(clear it first: mig-orchestrator restart bob --clear-overrides)")


def test_placement_counts_overrides_in_effect() -> None:
    cfg, _ = setup()
    plan = plan_partial(cfg, INVENTORY, overrides={"alice": {"gpu_memory_utilization": 0.6}})
    assert plan.models_on("GPU-0") == ["alice"]
    assert "bob" in plan.unplaced
