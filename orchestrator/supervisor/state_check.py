"""state.json checked as a whole before the daemon acts on it: every section and record of the
type the daemon wrote, nesting bounded. What fails is set aside, never the daemon's start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_STATE_BYTES = 16 * 1024 * 1024
# Runtime overrides nest two levels (env is a table); far deeper is damage, and json and pydantic
# recurse on it (1,001 nested arrays ended the daemon with a RecursionError).
MAX_DEPTH = 16
# Linux's PID_MAX_LIMIT (include/linux/threads.h): a pid outside it names no process.
PID_MAX = 4 * 1024 * 1024
_Name = Annotated[str, Field(min_length=1, max_length=256)]


class RecordModel(BaseModel):
    """One engine or standby as the daemon records it (supervisor/store.py's EngineRecord)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    pid: Annotated[int, Field(ge=1, le=PID_MAX)]
    pgid: Annotated[int, Field(ge=1, le=PID_MAX)]
    create_time: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    slice_uuid: _Name | None


_ENTRIES: dict[str, TypeAdapter[Any]] = {
    "assignments": TypeAdapter(_Name),
    "desired": TypeAdapter(Literal["running", "stopped"]),
    "overrides": TypeAdapter(dict[str, Any]),
    "engines": TypeAdapter(RecordModel),
    "standbys": TypeAdapter(RecordModel),
}


@dataclass
class Checked:
    """The sections' entries that passed, and what was set aside with the reason."""

    good: dict[str, dict[str, Any]] = field(default_factory=lambda: {s: {} for s in _ENTRIES})
    rejected: dict[str, Any] = field(default_factory=dict)  # "section" or "section.name" -> why

    def reject(self, where: str, value: Any, why: str) -> None:
        # Too deep a value is not copied: writing it back would recurse as deeply as reading did.
        kept = value if depth(value) <= MAX_DEPTH else None
        self.rejected[where] = {"error": why, "value": kept}


def depth(value: Any) -> int:
    """How deeply containers nest in a parsed JSON value (a scalar is 0), without recursing."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:  # past it the answer is known: stop walking
                todo += [(x, d + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return deepest


def check(raw: Any) -> Checked:
    """Sort a parsed state.json into what may be used and what is set aside."""
    out = Checked()
    if not isinstance(raw, dict):
        out.reject("(file)", raw, f"a JSON object was expected, not {type(raw).__name__}")
        return out
    for section, value in raw.items():
        adapter = _ENTRIES.get(section)
        if adapter is None:
            out.reject(section, value, "not a section this daemon writes")
        elif not isinstance(value, dict):
            out.reject(section, value, f"an object was expected, not {type(value).__name__}")
        else:
            for name, entry in value.items():
                _check_entry(out, adapter, section, name, entry)
    return out


def _check_entry(
    out: Checked, adapter: TypeAdapter[Any], section: str, name: str, entry: Any
) -> None:
    where = f"{section}.{name}"
    if depth(entry) > MAX_DEPTH:
        out.reject(where, entry, f"nested deeper than {MAX_DEPTH} levels")
        return
    try:
        out.good[section][name] = adapter.validate_python(entry)
    except ValidationError as e:
        why = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors()
        )
        out.reject(where, entry, why)
