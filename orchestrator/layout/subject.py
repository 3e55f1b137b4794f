"""One model's inputs to the memory estimate: its checkpoint, settings and the GPU it runs on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from orchestrator.config import Config, VllmSettings
from orchestrator.layout import checkpoint
from orchestrator.layout.estimate import Estimate, estimate


@dataclass(frozen=True)
class Subject:
    """Everything the estimate reads, so a changed setting can be re-estimated alone."""

    checkpoint: checkpoint.Checkpoint
    settings: VllmSettings
    guaranteed_seqs: int
    gpu_name: str
    gpu_total_bytes: int

    def estimate(self) -> Estimate:
        return estimate(
            self.checkpoint,
            self.settings,
            self.guaranteed_seqs,
            self.gpu_name,
            self.gpu_total_bytes,
        )

    def with_settings(self, **update: object) -> Subject:
        return replace(self, settings=self.settings.model_copy(update=update))


def load_subject(cfg: Config, name: str, gpu_name: str, gpu_total_bytes: int) -> Subject:
    """Model `name` of the config on a GPU; the files on disk win over a size_hint.

    Raises checkpoint.CheckpointError when the model is neither on this host nor hinted.
    """
    m = cfg.models[name]
    settings = cfg.effective_settings(name)
    env = settings.env or {}
    if m.size_hint is not None and not _on_disk(m.model, env):
        ck = checkpoint.from_hint(m.size_hint)
    else:
        ck = checkpoint.read(checkpoint.locate(m.model, env))
    return Subject(ck, settings, m.guaranteed_seqs, gpu_name, gpu_total_bytes)


def _on_disk(model: str, env: Mapping[str, str]) -> bool:
    try:
        checkpoint.locate(model, env)
    except checkpoint.CheckpointError:
        return False
    return True
