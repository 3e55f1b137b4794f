"""What an engine is given (its spec, its context) and what it shows (its status snapshot)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.config import OrchestratorSettings, VllmSettings
from orchestrator.engine.launch import Launch
from orchestrator.engine.process import ProcessId, ProcessOps
from orchestrator.engine.standby.slot import StandbySettings, StandbyStatus
from orchestrator.engine.starts import StartRecord
from orchestrator.engine.states import Desired, State
from orchestrator.gpu.inventory import Slice


@dataclass(frozen=True)
class EngineSpec:
    name: str
    model: str
    served_model_name: str
    host: str
    port: int
    slice: Slice | None
    shared_slice: bool
    launch: Launch
    settings: VllmSettings
    overrides: dict[str, Any]
    startup_timeout_s: float
    standby: StandbySettings = field(default_factory=StandbySettings)

    @property
    def probe_host(self) -> str:
        return (
            "127.0.0.1"
            if self.host in ("0.0.0.0", "")
            else ("::1" if self.host == "::" else self.host)
        )


@dataclass(frozen=True)
class ExitInfo:
    code: int | None
    signal: int | None
    at: float
    reason: str


class ExitListener(Protocol):
    def on_exit(self, pid: int, status: int) -> None: ...


@dataclass
class EngineContext:
    """What an engine needs from the supervisor around it, and from the OS (`ops`)."""

    settings: OrchestratorSettings
    slice_lock: Callable[[str], asyncio.Lock]
    slice_memory: Callable[[str], Awaitable[tuple[int, int] | None]]
    track: Callable[[int, ExitListener | None], None]  # pid -> engine for the reaper; None untracks
    changed: Callable[[], None]  # persist state
    ops: ProcessOps
    # pids holding GPU memory on a slice, per NVML; None when NVML cannot tell
    slice_pids: Callable[[str], Awaitable[set[int] | None]] | None = None


@dataclass(frozen=True)
class EngineStatus:
    """One engine as it was at one moment: what readers (API, metrics, dashboard, state.json)
    get instead of the engine and its process."""

    name: str
    state: State
    desired: Desired
    reason: str | None  # why it is not (or not yet) serving: the last failure, or the problem
    pid: int | None  # the main process, which leads its own process group
    process: ProcessId | None  # pid and start time, to find it again after a crash
    uptime_s: float | None
    restarts: int
    last_exit: ExitInfo | None
    last_start: StartRecord | None
    standby: StandbyStatus
    standby_process: ProcessId | None  # to stop after a daemon crash
