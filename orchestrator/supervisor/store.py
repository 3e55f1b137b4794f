"""Durable daemon state in state_dir: slice assignments, what admins asked for, live engine pids."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.supervisor import state_check
from orchestrator.trusted_paths import read_own, replace_atomically, write_new

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
        """The saved state; a damaged part is logged and set aside in a side file, and a damaged
        file as a whole is an empty state: nothing in it may keep the service down."""
        try:
            data = read_own(self.path, state_check.MAX_STATE_BYTES)
        except FileNotFoundError:
            return DaemonState()
        except OSError as e:
            return self._unusable(None, f"is unreadable ({e})")
        if len(data) > state_check.MAX_STATE_BYTES:
            return self._unusable(data, f"is larger than {state_check.MAX_STATE_BYTES} bytes")
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as e:  # RecursionError: arrays nested 1,000 deep
            return self._unusable(data, f"is unreadable ({type(e).__name__}: {e})")
        checked = state_check.check(raw)
        if "(file)" in checked.rejected:
            return self._unusable(data, f"is unreadable ({checked.rejected['(file)']['error']})")
        if checked.rejected:
            kept = self._set_aside(json.dumps(checked.rejected, indent=2).encode())
            for where, item in checked.rejected.items():
                log.error("state file %s: %s set aside: %s", self.path, where, item["error"])
            log.error("state file %s: what was set aside is kept in %s", self.path, kept)
        good = checked.good
        return DaemonState(
            assignments=good["assignments"],
            desired=good["desired"],
            overrides=good["overrides"],
            engines={k: EngineRecord(**r.model_dump()) for k, r in good["engines"].items()},
            standbys={k: EngineRecord(**r.model_dump()) for k, r in good["standbys"].items()},
        )

    def _unusable(self, data: bytes | None, why: str) -> DaemonState:
        kept = "" if data is None else f"; kept as {self._set_aside(data)}"
        log.error("state file %s %s%s; starting without saved state", self.path, why, kept)
        return DaemonState()

    def _set_aside(self, data: bytes) -> str:
        """Keep what the daemon will not use for the admin, beside the state file (0600)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for n in range(100):
            side = self.path.with_name(f"{STATE_FILE}.rejected-{stamp}" + (f"-{n}" if n else ""))
            try:
                write_new(side, data)
                return str(side)
            except FileExistsError:
                continue
            except OSError as e:
                return f"no file ({side}: {e})"
        return "no file (too many side files this second)"

    def save(self, state: DaemonState) -> None:
        data = json.dumps(asdict(state), indent=2, sort_keys=True).encode()
        replace_atomically(self.path, data, 0o640)
