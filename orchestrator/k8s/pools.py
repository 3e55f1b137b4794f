"""Which MIG resource each model asks for, and the mig-parted configs its node pools must carry.

The layout planner packs the MIG models onto every GPU of the MIG pools at once; each node's share
of that plan becomes one mig-parted config (nodes whose GPUs hold the same instances share one),
selected on the node by the GPU operator's `nvidia.com/mig.config` label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from orchestrator.config import Config
from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.gpu.mig_profiles import gpu_model
from orchestrator.layout import render
from orchestrator.layout.pack import GpuPlan, LayoutPlan, plan_layout
from orchestrator.layout.targets import Target, synthetic

MIG_CONFIG_LABEL = "nvidia.com/mig.config"
WHOLE_GPU = "nvidia.com/gpu"
# The GPU operator's own config name for GPUs with MIG off (its default-mig-parted-config).
ALL_DISABLED = "all-disabled"


class PoolError(Exception):
    """The course cannot be laid out on its node pools; `errors` holds one line per reason."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class Seat:
    """Where one model runs: its GPU resource and the mig.config of the nodes that offer it."""

    resource: str  # nvidia.com/mig-3g.40gb, or nvidia.com/gpu for a whole GPU
    profile: str | None  # the MIG profile; None for a whole GPU
    pool: str
    mig_config: str


@dataclass(frozen=True)
class NodeGroup:
    """Nodes of one pool that carry the same mig-parted config."""

    pool: str
    config: str
    nodes: int


@dataclass(frozen=True)
class ClusterPlan:
    seats: dict[str, Seat]
    mig_configs: dict[str, list[dict[str, object]]]  # config name -> mig-parted device entries
    groups: list[NodeGroup]
    layout: LayoutPlan | None  # the planner's plan for the MIG pools (None: no MIG model)


def mig_resource(profile: str) -> str:
    """The device plugin's resource for a profile under `mig.strategy=mixed`."""
    return f"nvidia.com/mig-{profile}"


def plan_cluster(cfg: Config, k8s: KubernetesSettings, source: str) -> ClusterPlan:
    """Seats for every model and the mig-parted configs, or PoolError with the planner's reasons."""
    seats, whole_groups, errors = _whole_gpu_pools(cfg, k8s)
    mig_models = {n: m for n, m in cfg.models.items() if n not in seats}
    targets, where, more = _mig_targets(k8s)
    errors += more
    if mig_models and not targets and not more:
        errors.append(
            f"kubernetes.node_pools: no pool with MIG on for {', '.join(sorted(mig_models))}"
        )
    if errors:
        raise PoolError(errors)
    # Always there: the GPU operator labels MIG-capable nodes with it until told otherwise, and
    # this config replaces its default one.
    configs: dict[str, list[dict[str, object]]] = {
        ALL_DISABLED: [{"devices": "all", "mig-enabled": False}]
    }
    if not mig_models:
        return ClusterPlan(seats, configs, whole_groups, None)
    layout = plan_layout(cfg.model_copy(update={"models": mig_models}), targets)
    if not layout.feasible:
        raise PoolError(_refusal(layout))
    groups = _node_configs(layout, where, source, configs)
    for g in layout.gpus:
        pool, node = where[g.target.index][:2]
        for placement, name in g.instances:
            profile = placement.profile.name
            seats[name] = Seat(mig_resource(profile), profile, pool, groups[(pool, node)])
    return ClusterPlan(seats, configs, whole_groups + _group_list(groups), layout)


def _refusal(layout: LayoutPlan) -> list[str]:
    lines = [f"models.{n}: {why}" for n, why in layout.unplaced.items()]
    lines += [
        f"models.{name}: its {p.profile.name} fits no GPU of the pools (the planner needs "
        f"one more {g.target.model.label} for it)"
        for g in layout.gpus
        if g.target.extra
        for p, name in g.instances
    ]
    lines += [f"not enough GPUs in the MIG pools: {r}" for r in layout.reasons]
    return lines + layout.advice


def _whole_gpu_pools(
    cfg: Config, k8s: KubernetesSettings
) -> tuple[dict[str, Seat], list[NodeGroup], list[str]]:
    """Models given a whole GPU by a pool with MIG off."""
    seats: dict[str, Seat] = {}
    groups: list[NodeGroup] = []
    errors: list[str] = []
    for pool_name, pool in k8s.node_pools.items():
        where = f"kubernetes.node_pools.{pool_name}"
        if pool.mig:
            if pool.models:
                errors.append(f"{where}.models: only a pool with mig = false lists its models")
            continue
        groups.append(NodeGroup(pool_name, ALL_DISABLED, pool.nodes))
        if len(pool.models) > pool.gpus * pool.nodes:
            errors.append(
                f"{where}.models: {len(pool.models)} models, one whole GPU each, but the pool "
                f"has {pool.gpus * pool.nodes} GPUs"
            )
        for name in pool.models:
            m = cfg.models.get(name)
            if m is None:
                errors.append(f"{where}.models: no model {name!r} in [models]")
            elif name in seats:
                errors.append(f"{where}.models: {name} is already in pool {seats[name].pool}")
            elif m.profile is not None or m.min_memory_gib is not None:
                what = "profile" if m.profile is not None else "min_memory_gib"
                errors.append(f"models.{name}.{what}: pool {pool_name} gives it a whole GPU")
            else:
                seats[name] = Seat(WHOLE_GPU, None, pool_name, ALL_DISABLED)
    return seats, groups, errors


def _mig_targets(
    k8s: KubernetesSettings,
) -> tuple[list[Target], dict[int, tuple[str, int, int]], list[str]]:
    """Every GPU of the MIG pools as one planner target; index -> (pool, node, device)."""
    targets: list[Target] = []
    where: dict[int, tuple[str, int, int]] = {}
    errors: list[str] = []
    for pool_name, pool in k8s.node_pools.items():
        if not pool.mig:
            continue
        if pool_name == ALL_DISABLED:
            errors.append(
                f"kubernetes.node_pools.{pool_name}: the GPU operator's config name for MIG "
                "off; give this MIG pool another name"
            )
            continue
        try:
            model = gpu_model(pool.gpu)
        except ValueError as e:
            errors.append(f"kubernetes.node_pools.{pool_name}.gpu: {e}")
            continue
        for node in range(pool.nodes):
            first = len(targets)
            targets += synthetic(model, pool.gpus, first_index=first)
            where.update({first + d: (pool_name, node, d) for d in range(pool.gpus)})
    return targets, where, errors


def _node_configs(
    layout: LayoutPlan,
    where: Mapping[int, tuple[str, int, int]],
    source: str,
    configs: dict[str, list[dict[str, object]]],
) -> dict[tuple[str, int], str]:
    """Each node's mig-parted entries, named per pool; adds them to `configs`."""
    per_node: dict[tuple[str, int], list[GpuPlan]] = {}
    for g in layout.gpus:
        pool, node, device = where[g.target.index]
        target = Target(device, g.target.model, g.target.name, None, None, None)
        per_node.setdefault((pool, node), []).append(
            GpuPlan(target, g.mig, g.instances, g.whole_models, g.room)
        )
    names: dict[tuple[str, int], str] = {}
    seen: dict[str, list[str]] = {}  # pool -> its config names, in order
    for (pool, node), gpus in per_node.items():
        sub = LayoutPlan(gpus, {}, len(gpus))
        entries = yaml.safe_load(render.mig_parted(sub, "node", source))["mig-configs"]["node"]
        mine = seen.setdefault(pool, [])
        name = next((c for c in mine if configs[c] == entries), None)
        if name is None:
            name = pool if not mine else f"{pool}-{len(mine) + 1}"
            mine.append(name)
            configs[name] = entries
        names[(pool, node)] = name
    return names


def _group_list(names: Mapping[tuple[str, int], str]) -> list[NodeGroup]:
    counts: dict[tuple[str, str], int] = {}
    for (pool, _node), config in names.items():
        counts[(pool, config)] = counts.get((pool, config), 0) + 1
    return [NodeGroup(pool, config, n) for (pool, config), n in counts.items()]
