"""The models keys are scoped to, from models.toml: names, served names, students, engine keys."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from orchestrator.accounting.scope import ModelRef
from orchestrator.config import Config, ConfigError, load_config
from orchestrator.secret_file import read_secret_file

log = logging.getLogger(__name__)
RECHECK_S = 1.0


def model_refs(cfg: Config, engine_keys: bool = True) -> tuple[ModelRef, ...]:
    """One ref per model; `engine_keys` reads each api_key_file (the gateway must send it)."""
    refs = []
    for name, m in cfg.models.items():
        key = None
        if engine_keys and m.api_key_file is not None:
            key = read_secret_file(m.api_key_file, f"models.{name}.api_key_file")
        # vLLM serves a model under its `model` when no served name is given.
        refs.append(ModelRef(name, m.served_model_name or m.model, m.student, key))
    return tuple(refs)


def students(cfg: Config) -> set[str]:
    return {m.student for m in cfg.models.values() if m.student}


class ConfigModels:
    """models.toml's refs, re-read when the file changes (checked at most every RECHECK_S).

    A file that no longer loads keeps the last good refs: a typo must not lock every key out.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = os.stat(path).st_mtime_ns
        self._refs = model_refs(load_config(path))
        self._checked = time.monotonic()

    def __call__(self) -> tuple[ModelRef, ...]:
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            self._reload()
        return self._refs

    def _reload(self) -> None:
        try:
            stamp = os.stat(self.path).st_mtime_ns
            if stamp != self._stamp:
                self._refs = model_refs(load_config(self.path))
                self._stamp = stamp
        except (OSError, ConfigError, ValueError) as e:
            log.warning("keys: keeping the models of %s as they were: %s", self.path, e)
