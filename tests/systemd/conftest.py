"""Fixtures that boot a systemd container (skipped unless root on Linux)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn_harness import REPO, Container, ensure_host_tools, ensure_rootfs, unavailable_reason


@pytest.fixture(scope="session")
def rootfs() -> Path:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    ensure_host_tools()
    started = time.monotonic()
    path = ensure_rootfs()
    print(f"rootfs ready at {path} in {time.monotonic() - started:.1f} s")
    return path


@pytest.fixture(scope="module")
def container(rootfs: Path) -> Iterator[Container]:
    """One booted container per test module, with the checkout bound read-only at /repo."""
    with Container(rootfs, binds_ro={str(REPO): "/repo"}) as booted:
        yield booted


@pytest.fixture(autouse=True)
def _journal_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed test, print the container's journal: the daemon's side of the story."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for value in request.node.funcargs.values():
        container = getattr(value, "container", value)
        if isinstance(container, Container) and container.leader is not None:
            journal = container.run(["journalctl", "-n", "200", "--no-pager"], check=False)
            print(f"--- container journal ---\n{journal.stdout}")
            return
