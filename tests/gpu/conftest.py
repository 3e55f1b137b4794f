"""The GPU tests' one daemon: started here, or adopted from the practicum (tests/gpu_support.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.practicum import session as gpu_session
from orchestrator.practicum.session import Session
from tests.gpu_support import setup


@pytest.fixture(scope="session")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    adopted = os.environ.get("MIG_ORCH_GPU_SESSION_FILE")
    if adopted:
        found = Session.load(Path(adopted))
        if not found.alive():
            pytest.fail(f"MIG_ORCH_GPU_SESSION_FILE={adopted}: its daemon is gone")
        yield found
        return
    root = tmp_path_factory.mktemp("gpu-session")
    started = gpu_session.start(setup(), root, python=sys.executable)
    yield started
    if started.alive():  # test_d did not get to stop it
        started.stop()
