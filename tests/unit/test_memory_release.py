"""The relaunch's wait for the previous engine's GPU memory, on a shared GPU: per process.

A shared GPU's memory total includes the other engine's, so the wait follows the previous
life's own pids in NVML's process list instead (tests/gpu checks it against the real driver).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from orchestrator.config import OrchestratorSettings
from orchestrator.engine.logfile import EngineLog
from orchestrator.engine.memory_wait import MemoryWait
from orchestrator.engine.spec import EngineContext
from orchestrator.gpu.inventory import Slice
from tests.fake_processes import FakeProcesses

GPU = Slice("GPU-1", 0, "GPU-1", "NVIDIA H200", None, 141 * 1024**3)


def _wait(tmp_path: Path, answers: list[set[int] | None]) -> MemoryWait:
    async def slice_pids(uuid: str) -> set[int] | None:
        assert uuid == GPU.uuid
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async def slice_memory(uuid: str) -> tuple[int, int] | None:
        return None

    ctx = EngineContext(
        settings=OrchestratorSettings(memory_release_timeout_s=0.5),
        slice_lock=lambda uuid: asyncio.Lock(),
        slice_memory=slice_memory,
        track=lambda pid, engine: None,
        changed=lambda: None,
        ops=FakeProcesses(),
        slice_pids=slice_pids,
    )
    return MemoryWait(ctx, EngineLog(tmp_path / "chat.log", 1 << 20, 1))


def _notes(wait: MemoryWait) -> list[str]:
    return [line for line in wait.log.tail(20) if line.startswith("[mig-orchestrator]")]


async def test_waits_until_nvml_no_longer_lists_the_previous_engines_pids(tmp_path: Path) -> None:
    # the EngineCore (11) holds memory for two more polls; the other engine (99) stays
    wait = _wait(tmp_path, [{11, 99}, {11, 99}, {99}])
    wait.remember({10, 11})
    await wait.before_start(GPU, shared=True)
    notes = _notes(wait)
    assert "waiting for the previous engine's GPU memory (pids [11]) in NVML" in notes[0]
    assert "released: none of pids [10, 11] in NVML" in notes[1]


async def test_gives_up_after_the_timeout_and_says_so(tmp_path: Path) -> None:
    wait = _wait(tmp_path, [{11}])
    wait.remember({11})
    await wait.before_start(GPU, shared=True)
    assert "pids [11] still hold GPU memory; starting anyway" in _notes(wait)[-1]


async def test_first_start_and_nvml_without_process_lists_do_not_wait(tmp_path: Path) -> None:
    first = _wait(tmp_path, [{99}])  # no previous life
    await first.before_start(GPU, shared=True)
    blind = _wait(tmp_path / "b", [None])  # e.g. the topology fake
    blind.remember({11})
    await blind.before_start(GPU, shared=True)
    assert _notes(first) == [] and _notes(blind) == []
