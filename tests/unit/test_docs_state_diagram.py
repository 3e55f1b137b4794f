"""docs/architecture.md's state diagrams are the transition tables of engine/states.py.

Each diagram sits between `<!-- NAME: ... -->` and `<!-- end NAME -->` and is generated here from
its table. Run `python -m tests.unit.test_docs_state_diagram` from the repository root to rewrite
them after changing a table.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from orchestrator.engine.states import STANDBY_TRANSITIONS, TRANSITIONS, StandbyState, State

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"

# Diagram name in the doc -> (table, the state a new machine starts in).
DIAGRAMS: dict[str, tuple[Mapping[enum.Enum, frozenset[enum.Enum]], enum.Enum]] = {
    "engine-states": (TRANSITIONS, State.STOPPED),  # type: ignore[dict-item]
    "standby-states": (STANDBY_TRANSITIONS, StandbyState.OFF),  # type: ignore[dict-item]
}


def mermaid(table: Mapping[enum.Enum, frozenset[enum.Enum]], initial: enum.Enum) -> str:
    """A mermaid stateDiagram with one arrow per allowed transition, in the enum's order."""
    order = list(type(initial))
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {initial.value}"]
    for old in order:
        for new in sorted(table[old], key=order.index):
            lines.append(f"    {old.value} --> {new.value}")
    return "\n".join([*lines, "```"])


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}: [^\n]*-->\n)(.*?)(<!-- end {name} -->)", re.DOTALL)


def rendered(text: str) -> str:
    """`text` with every diagram regenerated from its table."""
    for name, (table, initial) in DIAGRAMS.items():
        m = _block(name).search(text)
        if m is None:
            raise AssertionError(f"docs/architecture.md has no <!-- {name}: ... --> block")
        text = f"{text[: m.start(2)]}{mermaid(table, initial)}\n{text[m.end(2) :]}"
    return text


def test_state_diagrams_match_the_transition_tables() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, (table, initial) in DIAGRAMS.items():
        found = _block(name).search(text)
        assert found, f"docs/architecture.md has no <!-- {name}: ... --> block"
        assert found[2].strip() == mermaid(table, initial), (
            f"docs/architecture.md's {name} diagram differs from its table: run "
            "`python -m tests.unit.test_docs_state_diagram`"
        )


def test_every_state_appears_in_its_diagram() -> None:
    for table, initial in DIAGRAMS.values():
        diagram = mermaid(table, initial)
        for state in type(initial):
            assert re.search(rf"\b{state.value}\b", diagram), state


if __name__ == "__main__":
    DOC.write_text(rendered(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    sys.stdout.write(f"rewrote the state diagrams in {DOC}\n")
