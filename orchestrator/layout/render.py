"""A layout plan as text: a table per GPU, JSON, mig-parted config, models.toml lines, topology."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from typing import Any

from orchestrator.layout.estimate import Estimate, gib
from orchestrator.layout.geometry import memory
from orchestrator.layout.plan import GpuPlan, LayoutPlan, ModelPlan

MIG_PARTED_NAME = "mig-orchestrator"
# The GPU operator picks the config by the node label nvidia.com/mig.config=NAME, so NAME must be
# a Kubernetes label value (k8s.io/apimachinery validation: IsValidLabelValue), and non-empty.
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
SLOTS_NOTE = (
    "start slots (@N, free: room for ...) are this plan's; a mig-parted config carries counts "
    "only, and the driver chooses where each instance starts"
)


def check_config_name(name: str) -> str:
    """`name` if it can be a mig-parted config name and a node label value; else ValueError."""
    if not _LABEL_VALUE.match(name):
        raise ValueError(
            f"{name[:80]!r} is not a Kubernetes label value: 1 to 63 letters, digits, '-', '_' "
            "or '.', beginning and ending with a letter or digit (the GPU operator selects the "
            "config by the node label nvidia.com/mig.config=NAME)"
        )
    return name


_UUIDS = uuid.UUID("6d1c4d3e-0f5e-4f57-9b8e-6c6f6d2a7a11")  # namespace of planned device UUIDs


def _rows(rows: list[list[str]], header: list[str], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]


_COLUMNS = ["SLOTS", "PROFILE", "MODEL", "NEEDS GiB", "USABLE GiB", "HEADROOM", "KV CACHE ROOM"]


def _gpu_title(g: GpuPlan) -> str:
    t = g.target
    where = " (extra: not on this host)" if t.extra else ""
    if not g.mig:
        what = "MIG off: whole GPU" + (
            f" for {', '.join(g.whole_models)}" if g.used else ", unused"
        )
    else:
        what = "MIG on: " + " + ".join(p.profile.name for p, _ in g.instances)
    return f"GPU{t.index} {t.model.label}{where}  {what}{_today(g)}"


def _today(g: GpuPlan) -> str:
    """What the GPU holds now, and whether the plan needs it changed."""
    t = g.target
    if t.mig_now is None:
        return ""
    if not t.mig_now:
        return "; now: MIG off" + (" (unchanged)" if not g.mig else " (to change)")
    now = Counter(t.now or ())
    today = ", ".join(t.now or ()) or "MIG on, no instances"
    if not g.mig:
        return f"; now: {today} (to change)"
    planned = Counter(p.profile.name for p, _ in g.instances)
    if planned == now:
        return f"; now: {today} (unchanged)"
    if not planned - now:  # every planned instance is already there; the rest is spare
        spare = ", ".join(sorted((now - planned).elements()))
        return f"; now: {today} (already there; spare: {spare})"
    return f"; now: {today} (to change)"


def _fit_cells(e: Estimate | None, memory_bytes: int) -> list[str]:
    if e is None:
        return ["?", "-", "-", "-"]
    usable = e.usable(memory_bytes)
    headroom = usable - e.total
    room = f"{e.full_sequences(memory_bytes):.1f} x {e.max_model_len} tokens"
    mark = "" if headroom >= 0 else "  DOES NOT FIT"
    return [
        f"{gib(e.total)}",
        f"{gib(usable)} (x{e.utilization:g})",
        f"{gib(headroom)}{mark}",
        room,
    ]


def table(plan: LayoutPlan) -> str:
    """The readable plan: per GPU its instances with estimate vs usable memory, then why."""
    out: list[str] = []
    for g in plan.gpus:
        out.append(_gpu_title(g))
        rows = []
        for p, name in g.instances:
            e = plan.models[name].estimate
            rows.append(
                [
                    p.slot_text,
                    p.profile.name,
                    name,
                    *_fit_cells(e, p.profile.memory_bytes),
                ]
            )
        for name in g.whole_models:
            e = plan.models[name].estimate
            rows.append(
                ["0-7", "whole GPU", name, *_fit_cells(e, g.target.model.memory_total_bytes)]
            )
        if rows:
            out += _rows(rows, _COLUMNS)
        if g.mig and g.room:
            room = ", ".join(str(p) for p in g.room)
            out.append(f"  free: room for {room} ({gib(memory(g.room))} GiB; see Notes)")
        out.append("")
    out += _estimates(plan)
    placed = [(n, m) for n, m in plan.models.items() if m.gpu is not None]
    sections: list[tuple[str, list[str]]] = [
        ("Why", [f"{n}: {m.choice.why}" for n, m in placed if m.choice] + plan.reasons),
        ("Not placed", [f"{n}: {why}" for n, why in plan.unplaced.items()]),
        ("Notes", [*plan.notes, *_estimate_notes(plan), SLOTS_NOTE]),
        ("To make it fit", plan.advice),
    ]
    for title, lines in sections:
        if lines:
            out += ["", f"{title}:", *(f"  {line}" for line in lines)]
    return "\n".join(out).rstrip() + "\n"


def _estimates(plan: LayoutPlan) -> list[str]:
    rows = []
    for name, m in plan.models.items():
        e = m.estimate
        if e is None:
            continue
        rows.append(
            [name]
            + [gib(v) for v in (e.weights, e.activation, e.overhead, e.cuda_graphs)]
            + [f"{gib(e.kv_cache)} ({e.guaranteed_seqs} x {e.max_model_len})", gib(e.total)]
            + [e.source]
        )
    if not rows:
        return []
    header = ["MODEL", "WEIGHTS", "ACTIVATION", "OVERHEAD", "GRAPHS", "KV CACHE", "TOTAL", "FROM"]
    return ["Estimates (GiB):", *_rows(rows, header)]


def _estimate_notes(plan: LayoutPlan) -> list[str]:
    return [
        f"{n}: {note}" for n, m in plan.models.items() if m.estimate for note in m.estimate.notes
    ]


def _model_json(m: ModelPlan) -> dict[str, Any]:
    e = m.estimate
    return {
        "gpu": m.gpu,
        "profile": None if m.placement is None else m.placement.profile.name,
        "start": None if m.placement is None else m.placement.start,
        "choice": None if m.choice is None else m.choice.why,
        "pinned": bool(m.choice and m.choice.pinned),
        "problem": m.problem,
        "estimate": None
        if e is None
        else {
            **{f"{k}_bytes": v for k, v in e.terms().items()},
            "total_bytes": e.total,
            "kv_bytes_per_token": e.kv_bytes_per_token,
            "max_model_len": e.max_model_len,
            "guaranteed_seqs": e.guaranteed_seqs,
            "gpu_memory_utilization": e.utilization,
            "max_num_seqs": e.batch.max_num_seqs,
            "max_num_batched_tokens": e.batch.max_num_batched_tokens,
            "source": e.source,
            "exact_weights": e.exact_weights,
            "notes": list(e.notes),
        },
    }


def to_json(plan: LayoutPlan) -> str:
    gpus = [
        {
            "index": g.target.index,
            "gpu_model": g.target.model.label,
            "name": g.target.name,
            "uuid": g.target.uuid,
            "extra": g.target.extra,
            "mig_enabled": g.mig,
            "instances": [
                {
                    "profile": p.profile.name,
                    "start": p.start,
                    "slots": p.profile.memory_slices,
                    "memory_bytes": p.profile.memory_bytes,
                    "model": name,
                }
                for p, name in g.instances
            ],
            "whole_gpu_models": list(g.whole_models),
            "room": [{"profile": p.profile.name, "start": p.start} for p in g.room],
            "now": None
            if g.target.mig_now is None
            else {"mig_enabled": g.target.mig_now, "profiles": list(g.target.now or ())},
        }
        for g in plan.gpus
    ]
    doc = {
        "feasible": plan.feasible,
        "gpus_available": plan.available,
        "gpus": gpus,
        "models": {n: _model_json(m) for n, m in plan.models.items()},
        "unplaced": plan.unplaced,
        "reasons": plan.reasons,
        "notes": plan.notes + _estimate_notes(plan),
        "advice": plan.advice,
    }
    return json.dumps(doc, indent=2) + "\n"


def _host_gpus(plan: LayoutPlan) -> list[GpuPlan]:
    return [g for g in plan.gpus if not g.target.extra]


def mig_parted(plan: LayoutPlan, name: str = MIG_PARTED_NAME, source: str = "models.toml") -> str:
    """A nvidia-mig-parted v1 config; GPUs that hold the same instances share one entry."""
    quoted = json.dumps(check_config_name(name))  # quoted: YAML 1.1 reads `yes` as true
    groups: dict[tuple[bool, tuple[tuple[str, int], ...]], list[GpuPlan]] = {}
    for g in _host_gpus(plan):
        per_profile = Counter(p.profile.name for p, _ in g.instances)
        groups.setdefault((g.mig, tuple(sorted(per_profile.items()))), []).append(g)
    lines = [
        f"# MIG layout planned by `mig-orchestrator layout` from {source}.",
        f"# Apply: nvidia-mig-parted apply -f THIS_FILE -c {name}",
        "# GPU operator: make it config.yaml in the ConfigMap default-mig-parted-config and",
        f"# label the node nvidia.com/mig.config={name}.",
        "# MIG devices are recreated, so their UUIDs change: update `slice =` pins to MIG UUIDs.",
        f"# Counts, not places: {SLOTS_NOTE}.",
        *(
            f"# NOT PLACED, left out of this config: {n}: {why}"
            for n, why in sorted(plan.unplaced.items())
        ),
        "version: v1",
        "mig-configs:",
        f"  {quoted}:",
    ]
    for (mig, instances), members in groups.items():
        for g in members:
            held = ", ".join(f"{p}: {n}" for p, n in g.instances) or (
                "whole GPU for " + ", ".join(g.whole_models) if g.whole_models else ""
            )
            lines.append(f"    # GPU{g.target.index}: {held or 'nothing planned'}")
        lines.append(f"    - devices: [{', '.join(str(g.target.index) for g in members)}]")
        lines.append(f"      mig-enabled: {'true' if mig else 'false'}")
        if mig:
            lines.append("      mig-devices:")
            lines += [f'        "{profile}": {n}' for profile, n in instances]
    return "\n".join(lines) + "\n"


def profile_lines(plan: LayoutPlan) -> str:
    """The selector each model should have in models.toml for this layout."""
    lines = [
        "# models.toml selectors for this layout (each replaces the model's profile, "
        "min_memory_gib or slice):"
    ]
    for name, m in plan.models.items():
        if m.gpu is None:
            lines += ["", f"[models.{name}]", f"# not placed: {m.problem}"]
        elif m.placement is not None:
            lines += ["", f"[models.{name}]", f'profile = "{m.placement.profile.name}"']
        else:
            lines += ["", f"[models.{name}]", f"slice = {m.gpu}   # the whole GPU, MIG off"]
    return "\n".join(lines) + "\n"


def topology(plan: LayoutPlan, source: str = "models.toml") -> str:
    """The planned layout as a fake-NVML topology file, for plan / serve / demo --topology."""
    lines = [
        f"# Fake NVML topology: the MIG layout `mig-orchestrator layout` planned from {source}.",
        "# Format: orchestrator/gpu/topology_file.py. Memory slots are noted beside each device.",
        "",
        "[driver]",
        "privileged = true",
    ]
    for g in _host_gpus(plan):
        t = g.target
        gpu_uuid = t.uuid or f"GPU-{uuid.uuid5(_UUIDS, f'{source}/{t.index}')}"
        lines += [
            "",
            "[[gpu]]",
            f'name = "{t.name}"',
            f'uuid = "{gpu_uuid}"',
            f'mig = "{"enabled" if g.mig else "disabled"}"',
            f'profiles = "{t.model.key}"',
            f"memory_total_mib = {t.model.memory_total_mib}",
        ]
        for slot, (p, name) in enumerate(g.instances):
            mig_uuid = uuid.uuid5(_UUIDS, f"{gpu_uuid}/{p.start}/{p.profile.name}")
            lines += [
                "",
                f"[[gpu.mig_device]]   # {name}: memory slots {p.slot_text}",
                f"slot = {slot}",
                f'uuid = "MIG-{mig_uuid}"',
                f'profile = "{p.profile.name}"',
                f"gi_id = {slot + 1}",
                "ci_id = 0",
            ]
    return "\n".join(lines) + "\n"
