"""Which models a key may use: its owner's own (models.toml's `student` label), a list, or all."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.accounting.keys import ALL_MODELS, Key


@dataclass(frozen=True)
class ModelRef:
    """A model as models.toml names it, with what clients send as `model` and its student."""

    name: str
    served: str
    student: str | None = None
    engine_key: str | None = None  # the engine's own --api-key (models.toml api_key_file)

    def upstream_headers(self) -> dict[str, str]:
        """The caller's key never reaches the engine; the engine's own key does, if it has one."""
        return {"authorization": f"Bearer {self.engine_key}" if self.engine_key else ""}


def resolve(model: str, refs: tuple[ModelRef, ...]) -> ModelRef | None:
    for ref in refs:
        if model in (ref.served, ref.name):
            return ref
    return None


def may_use(key: Key, model: str, refs: tuple[ModelRef, ...]) -> bool:
    models = key.limits.models
    if models is not None and ALL_MODELS in models:
        return True
    ref = resolve(model, refs)
    if models is None:
        return ref is not None and key.owner_kind == "student" and ref.student == key.owner
    if model in models:
        return True
    return ref is not None and (ref.name in models or ref.served in models)
