"""Plain-text tables for the terminal: the CLI's listings and the bench reports."""

from __future__ import annotations

from collections.abc import Sequence


def render_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, numbers: bool = False
) -> str:
    """Columns two spaces apart, no trailing blanks; `numbers` right-aligns all but the first."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [
            c.rjust(w) if numbers and i else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
