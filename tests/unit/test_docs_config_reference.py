"""docs/configuration.md documents every key of models.toml, and nothing the code lacks.

The code's tables come from walking the pydantic models from `Config` down: a field holding a
model (or an optional one) is a sub-table `[parent.key]`, a dict of models is `[parent.key.<name>]`,
any other field is a key. A model table also takes every engine setting of `[defaults]`, which the
doc lists once, under `[defaults]`. The doc's tables are its `## [table]` headings and the rows
under each that start with | `key` |.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from orchestrator.config import Config, VllmSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# Documented ahead of their code, which lands with the OpenAI gateway and its keys, the metrics
# token and evaluation: (table, key or None for the whole table). Each entry must still be
# missing from the code; once the code has it, the test fails until the entry is removed here,
# and from then on the key is checked like any other.
AHEAD_OF_CODE: frozenset[tuple[str, str | None]] = frozenset(
    {
        ("orchestrator", "metrics_token_file"),
        ("orchestrator", "eval_db"),
    }
)

_HEADING = re.compile(r"^## \[([^\]]+)\]\s*$")
_ROW = re.compile(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|")


def _model_in(annotation: object) -> tuple[type[BaseModel], bool] | None:
    """The model a field holds, and whether it is a dict of them; None for a plain key."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is dict:
        inner = _model_in(args[1])
        return (inner[0], True) if inner else None
    if origin in (typing.Union, types.UnionType):
        found = [m for a in args if a is not type(None) and (m := _model_in(a))]
        return found[0] if found else None
    return None


def _walk(model: type[BaseModel], path: str, out: dict[str, set[str]]) -> None:
    keys: set[str] = set()
    inherited = (
        set(VllmSettings.model_fields)
        if issubclass(model, VllmSettings) and model is not VllmSettings
        else set()
    )
    for name, field in model.model_fields.items():
        sub = _model_in(field.annotation)
        if sub is None:
            if name not in inherited:
                keys.add(name)
            continue
        inner, is_dict = sub
        child = f"{path}.{name}" if path else name
        _walk(inner, f"{child}.<name>" if is_dict else child, out)
    if path:
        out[path] = keys


def code_tables() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    _walk(Config, "", out)
    return out


def doc_tables(text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    table: str | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            m = _HEADING.match(line)
            table = m.group(1) if m else None
            if table is not None:
                assert table not in out, f"docs/configuration.md: [{table}] appears twice"
                out[table] = set()
        elif table is not None and (row := _ROW.match(line)):
            assert row.group(1) not in out[table], f"[{table}] {row.group(1)} is listed twice"
            out[table].add(row.group(1))
    return out


def _without_ahead(tables: dict[str, set[str]]) -> dict[str, set[str]]:
    out = {t: set(keys) for t, keys in tables.items()}
    for table, key in AHEAD_OF_CODE:
        if key is None:
            out.pop(table, None)
        elif table in out:
            out[table].discard(key)
    return out


def test_entries_ahead_of_code_are_still_missing_from_it() -> None:
    code = code_tables()
    landed = sorted(
        f"[{t}]" + (f" {k}" if k else "")
        for t, k in AHEAD_OF_CODE
        if (t in code if k is None else k in code.get(t, set()))
    )
    assert not landed, f"now in the code: remove from AHEAD_OF_CODE: {', '.join(landed)}"


def test_every_code_key_is_documented_and_every_documented_key_exists() -> None:
    code = code_tables()
    doc = _without_ahead(doc_tables(DOC.read_text(encoding="utf-8")))
    problems = [f"[{t}]: table not in docs/configuration.md" for t in sorted(code.keys() - doc)]
    problems += [f"[{t}]: documented, not in the code" for t in sorted(doc.keys() - code)]
    for table in sorted(code.keys() & doc.keys()):
        problems += [f"[{table}] {k}: not documented" for k in sorted(code[table] - doc[table])]
        problems += [
            f"[{table}] {k}: documented, not in the code" for k in sorted(doc[table] - code[table])
        ]
    assert not problems, "\n".join(problems)


def test_the_walk_sees_every_table_the_code_has() -> None:
    """The walk itself: nested tables, dicts of tables and inherited engine settings."""
    code = code_tables()
    assert {"orchestrator", "defaults", "models.<name>", "models.<name>.size_hint"} <= code.keys()
    assert "kubernetes.node_pools.<name>" in code
    assert "gpu_memory_utilization" in code["defaults"]
    assert "gpu_memory_utilization" not in code["models.<name>"]
    assert {"model", "port"} <= code["models.<name>"]
    assert "size_hint" not in code["models.<name>"]


_SAMPLE = (
    "## [a]", "", "| key | x |", "|---|---|", "| `k1` | 1 |", "| `k2` | 2 |",
    "## Other", "| `no` | - |", "## [b.<name>]", "| `k3` | 3 |",
)  # fmt: skip


def test_doc_parser_reads_headings_and_rows_only() -> None:
    assert doc_tables("\n".join(_SAMPLE)) == {"a": {"k1", "k2"}, "b.<name>": {"k3"}}
