"""Durable daemon state in state_dir: slice assignments, what admins asked for, live engine pids."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
STATE_FILE = "state.json"


@dataclass
class EngineRecord:
    pid: int
    pgid: int
    create_time: float
    slice_uuid: str | None


@dataclass
class DaemonState:
    assignments: dict[str, str] = field(default_factory=dict)  # model -> slice uuid
    desired: dict[str, str] = field(default_factory=dict)  # model -> "running" | "stopped"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    engines: dict[str, EngineRecord] = field(default_factory=dict)
    standbys: dict[str, EngineRecord] = field(default_factory=dict)  # model -> its standby

    def leftovers(self) -> dict[str, EngineRecord]:
        """Every process tree recorded, by a name to log it under."""
        return {**self.engines, **{f"{n} (standby)": r for n, r in self.standbys.items()}}


class StateStore:
    """Reads once at start, then rewrites the whole file atomically on every change."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)

    def load(self) -> DaemonState:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return DaemonState(
                assignments=dict(raw.get("assignments", {})),
                desired=dict(raw.get("desired", {})),
                overrides={k: dict(v) for k, v in raw.get("overrides", {}).items()},
                engines={k: EngineRecord(**v) for k, v in raw.get("engines", {}).items()},
                standbys={k: EngineRecord(**v) for k, v in raw.get("standbys", {}).items()},
            )
        except FileNotFoundError:
            return DaemonState()
        # Valid JSON of the wrong shape (a list, a record missing a field) is damage too.
        except (OSError, ValueError, TypeError, AttributeError) as e:
            # A damaged file must not keep the service down; say so and start clean.
            log.error(
                "state file %s is unreadable (%s); starting without saved state", self.path, e
            )
            return DaemonState()

    def save(self, state: DaemonState) -> None:
        data = json.dumps(asdict(state), indent=2, sort_keys=True).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(data)
            while view:  # os.write may stop short; a truncated file must never replace a good one
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
