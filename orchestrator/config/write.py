"""models.toml written from typed values, for the demo, the practicum and tests: one renderer, so
every generated file quotes and escapes the same way and loads back through parse_config."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """One TOML value; strings and paths as basic strings (JSON's escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}: {value!r}")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _table(name: str, values: Mapping[str, Any]) -> list[str]:
    return ["", f"[{name}]", *(f"{_key(k)} = {toml_value(v)}" for k, v in values.items())]


def render_models_toml(
    orchestrator: Mapping[str, Any] | None,
    models: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, Any] | None = None,
    header: str | None = None,
) -> str:
    """[orchestrator] and [defaults] (when given) and one [models.NAME] table per model."""
    lines = [f"# {header}"] if header else []
    if orchestrator is not None:
        lines += _table("orchestrator", orchestrator)
    if defaults:
        lines += _table("defaults", defaults)
    for name, model in models.items():
        lines += _table(f"models.{_key(name)}", model)
    return "\n".join(lines).lstrip("\n") + "\n"
