"""The one table printer the CLI and the bench reports share."""

from __future__ import annotations

from orchestrator.text_table import render_table


def test_columns_are_left_aligned_and_lines_have_no_trailing_blanks() -> None:
    text = render_table(["MODEL", "PORT", "NOTE"], [["alice", "8001", ""], ["bob-long", "12", "x"]])
    assert text.splitlines() == [
        "MODEL     PORT  NOTE",
        "alice     8001",
        "bob-long  12    x",
    ]


def test_numbers_right_aligns_every_column_but_the_first() -> None:
    text = render_table(["CONC", "REQ/S"], [["1", "0.5"], ["16", "12.25"]], numbers=True)
    assert text.splitlines() == [
        "CONC  REQ/S",
        "1       0.5",
        "16    12.25",
    ]
