"""Hooks for every test directory."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    """Keep each phase's report on the item, so fixtures can act on a failure (logs, screenshot)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
