"""`check`'s memory warnings: models whose estimate exceeds the slice they were placed on."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.config import Config
from orchestrator.gpu.inventory import Inventory, Slice
from orchestrator.layout.advice import changes_to_fit
from orchestrator.layout.checkpoint import CheckpointError
from orchestrator.layout.estimate import EstimateError, gib
from orchestrator.layout.subject import load_subject


def slice_warnings(
    cfg: Config, assignments: Mapping[str, Slice], inventory: Inventory
) -> list[str]:
    """One line per model that would not fit its slice; models that cannot be sized are skipped.

    Skipped silently on purpose: a hub id that is not cached is normal on a machine that only
    checks the file; `mig-orchestrator layout` says why a model has no estimate.
    """
    gpus = {g.index: g for g in inventory.gpus}
    out = []
    for name, s in sorted(assignments.items()):
        gpu = gpus[s.gpu_index]
        try:
            subject = load_subject(cfg, name, gpu.name, gpu.memory_total_bytes)
            e = subject.estimate()
        except (CheckpointError, EstimateError):
            continue
        if e.fits(s.memory_total_bytes):
            continue
        where = f"GPU{s.gpu_index} {s.profile or 'whole GPU'}"
        line = (
            f"models.{name}: needs an estimated {e.describe()}, more than {where} gives it: "
            f"{gib(s.memory_total_bytes)} GiB x {e.utilization:g} = "
            f"{gib(e.usable(s.memory_total_bytes))} GiB"
        )
        changes = changes_to_fit(subject, s.memory_total_bytes)
        if changes:
            line += f"; it would fit with {'; or '.join(changes)}"
        out.append(line)
    return out
