"""The relaunch's wait for the previous engine's GPU memory, on a shared GPU: per process.

A shared GPU's memory total includes the other engine's, so the wait follows the previous
life's own pids in NVML's process list instead (tests/gpu checks it against the real driver).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from orchestrator.config import OrchestratorSettings, VllmSettings
from orchestrator.engine.launch import Launch
from orchestrator.engine.lifecycle import Engine, EngineContext, EngineSpec
from orchestrator.engine.logfile import EngineLog
from orchestrator.gpu.inventory import Slice
from tests.fake_processes import FakeProcesses

GPU = Slice("GPU-1", 0, "GPU-1", "NVIDIA H200", None, 141 * 1024**3)


def _engine(tmp_path: Path, answers: list[set[int] | None], shared: bool = True) -> Engine:
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
    spec = EngineSpec(
        name="chat",
        model="m",
        served_model_name="chat",
        host="127.0.0.1",
        port=1,
        slice=GPU,
        shared_slice=shared,
        launch=Launch(argv=["x"], env={}, extra_env={}),
        settings=VllmSettings(),
        overrides={},
        startup_timeout_s=1,
    )
    return Engine(spec, ctx, EngineLog(tmp_path / "chat.log", 1 << 20, 1))


def _notes(engine: Engine) -> list[str]:
    return [line for line in engine.log.tail(20) if line.startswith("[mig-orchestrator]")]


async def test_waits_until_nvml_no_longer_lists_the_previous_engines_pids(tmp_path: Path) -> None:
    # the EngineCore (11) holds memory for two more polls; the other engine (99) stays
    engine = _engine(tmp_path, [{11, 99}, {11, 99}, {99}])
    engine._last_pids = {10, 11}
    await engine._await_memory_release()
    notes = _notes(engine)
    assert "waiting for the previous engine's GPU memory (pids [11]) in NVML" in notes[0]
    assert "released: none of pids [10, 11] in NVML" in notes[1]


async def test_gives_up_after_the_timeout_and_says_so(tmp_path: Path) -> None:
    engine = _engine(tmp_path, [{11}])
    engine._last_pids = {11}
    await engine._await_memory_release()
    assert "pids [11] still hold GPU memory; starting anyway" in _notes(engine)[-1]


async def test_first_start_and_nvml_without_process_lists_do_not_wait(tmp_path: Path) -> None:
    first = _engine(tmp_path, [{99}])  # no previous life
    await first._await_memory_release()
    blind = _engine(tmp_path / "b", [None])  # e.g. the topology fake
    blind._last_pids = {11}
    await blind._await_memory_release()
    assert _notes(first) == [] and _notes(blind) == []
