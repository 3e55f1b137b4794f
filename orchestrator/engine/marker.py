"""The mark every engine carries in its environment: which daemon (by its state_dir) and which
model it belongs to, so that a restarted daemon finds all of its engines' processes even when
state.json lost them (a crash between spawn and save) or their main process died meanwhile."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "MIG_ORCH_ENGINE"
# vLLM names its EngineCore and workers with setproctitle, which overwrites /proc/PID/environ
# (and the mark with it) unless SPT_NOENV is set; the title then fits in argv's space.
_KEEP_ENVIRON = "SPT_NOENV"


def owner(state_dir: Path) -> str:
    """The daemon's identity: two daemons on one host never share a state_dir."""
    return os.path.realpath(state_dir)


def prefix(state_dir: Path) -> str:
    """What the mark of every engine of the daemon on state_dir starts with."""
    return f"{owner(state_dir)}:"


def engine_env(state_dir: Path, model: str) -> dict[str, str]:
    return {ENV: prefix(state_dir) + model, _KEEP_ENVIRON: "1"}


def model_of(value: str, state_dir: Path) -> str | None:
    """The model a mark names if it is the mark of the daemon on state_dir, else None (model
    names have no colon; a state_dir path may, so "/a:b" must not pass as "/a")."""
    who, _, model = value.rpartition(":")
    return model if who == owner(state_dir) else None
