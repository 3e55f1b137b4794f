"""The mark every engine carries in its environment: which daemon and which model it belongs to,
so that a restarted daemon finds all of its engines' processes even when state.json lost them (a
crash between spawn and save) or their main process died meanwhile.

Anyone can put any text in a process's environment, so the mark is a keyed hash: a secret kept
in state_dir (0600) over the state_dir's real path. Only a process the daemon started carries
it; a forged mark names no daemon, and its process is never stopped as a leftover.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from orchestrator.trusted_paths import read_own, write_new

ENV = "MIG_ORCH_ENGINE"
KEY_FILE = "engine-mark.key"
_KEY_BYTES = 64  # hex of a 32-byte secret
# vLLM names its EngineCore and workers with setproctitle, which overwrites /proc/PID/environ
# (and the mark with it) unless SPT_NOENV is set; the title then fits in argv's space.
_KEEP_ENVIRON = "SPT_NOENV"


@dataclass(frozen=True)
class DaemonMark:
    """The mark of the daemon on one state_dir: `tag` is what its engines' marks start with."""

    tag: str

    @classmethod
    def load(cls, state_dir: Path) -> DaemonMark:
        """Read the state_dir's secret, made on first use; OSError when it cannot be trusted."""
        path = state_dir / KEY_FILE
        try:
            key = read_own(path, _KEY_BYTES)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # made meanwhile: read what won
                write_new(path, secrets.token_hex(_KEY_BYTES // 2).encode())
            key = read_own(path, _KEY_BYTES)
        if len(key) != _KEY_BYTES:
            raise OSError(f"{path}: not a key this daemon made; remove it and start again")
        real = os.path.realpath(state_dir).encode()
        # The real path too: two state_dirs of one host never share a mark, even when copied.
        return cls(hmac.new(key, real, hashlib.sha256).hexdigest()[:32])

    @property
    def prefix(self) -> str:
        """What the mark of every engine of this daemon starts with."""
        return f"{self.tag}:"

    def env(self, model: str) -> dict[str, str]:
        return {ENV: self.prefix + model, _KEEP_ENVIRON: "1"}

    def model_of(self, value: str) -> str | None:
        """The model a mark names if it is this daemon's mark, else None."""
        who, _, model = value.partition(":")
        return model if hmac.compare_digest(who.encode(), self.tag.encode()) else None
