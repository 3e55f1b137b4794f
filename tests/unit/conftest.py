"""Unit-test guards shared by every module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_illegal_state_transition(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """An engine logs an illegal state transition and carries on (see engine/states.py): in
    tests that is a failure."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    bugs = [m for r in records if "illegal engine state" in (m := r.getMessage())]
    assert not bugs, bugs
