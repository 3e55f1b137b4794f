"""A Supervisor in-process over the a100-mixed topology (3g.40gb, 2g.20gb, 1g.10gb x2), on fake
processes reaped through a real SIGCHLD handler."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.gpu.nvml import load_inventory
from orchestrator.supervisor.store import StateStore
from orchestrator.supervisor.supervisor import Supervisor
from tests.daemon_harness import TOPOLOGIES
from tests.fake_processes import FakeProcesses


class SupervisorHost:
    def __init__(self, root: Path) -> None:
        self.root = root
        # SIGCHLD, as the kernel sends it: the supervisor's handler reaps through the fake.
        self.fake = FakeProcesses(on_exit=lambda pid, status: signal.raise_signal(signal.SIGCHLD))
        self.sup: Supervisor | None = None

    async def open_supervisor(self, cfg: Config, allow_partial: bool = False) -> Supervisor:
        inventory = load_inventory(TOPOLOGIES / "a100-mixed.toml")
        store = StateStore(cfg.orchestrator.state_dir)
        self.sup = Supervisor(cfg, inventory, store, allow_partial=allow_partial, ops=self.fake)
        await self.sup.open()
        return self.sup

    def saved(self) -> dict[str, Any]:
        """state.json as the supervisor last wrote it."""
        assert self.sup is not None
        return dict(json.loads(self.sup.store.path.read_text()))

    async def close(self) -> None:
        if self.sup is not None:
            await self.sup.shutdown()
        self.fake.close()
