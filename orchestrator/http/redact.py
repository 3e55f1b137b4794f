"""Environment values in status are secrets (HF_TOKEN, keys): shown as names with masked values."""

from __future__ import annotations

from typing import Any

MASK = "***"


def mask_env(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` (settings or overrides) with every env value replaced by MASK."""
    env = fields.get("env")
    if not env:
        return fields
    return {**fields, "env": dict.fromkeys(env, MASK)}
