"""Unit-test guards shared by every module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_illegal_state_transition(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """An engine (or its standby) logs an illegal state transition and carries on (see
    engine/states.py): in tests that is a failure."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    bugs = [
        m
        for r in records
        if "illegal engine state" in (m := r.getMessage()) or "illegal standby state" in m
    ]
    assert not bugs, bugs
