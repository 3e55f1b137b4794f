"""The control plane's handle on the accounting database: one connection, one caller at a time."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from orchestrator.accounting.database import connect, database_path
from orchestrator.accounting.keys import KeyStore
from orchestrator.accounting.report import counters
from orchestrator.prom_text import Family, Sample, render

T = TypeVar("T")

# Counters per owner and model only: a key or request label would grow without bound.
_COUNTERS = (
    ("mig_orchestrator_usage_requests_total", "requests", "Requests admitted and finished."),
    ("mig_orchestrator_usage_errors_total", "errors", "Requests that ended in an error."),
    ("mig_orchestrator_usage_lost_total", "lost", "Requests in flight when a gateway died."),
    ("mig_orchestrator_usage_prompt_tokens_total", "prompt_tokens", "Prompt tokens."),
    ("mig_orchestrator_usage_completion_tokens_total", "completion_tokens", "Completion tokens."),
)


class Accounts:
    """Opened on first use (the database file appears with the first key or usage)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = database_path(state_dir)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on the connection in a worker thread, so the event loop never waits on disk."""
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._conn is None:
                self._conn = connect(self.path)
            return work(self._conn)

    async def keys(self) -> KeyStore:
        return await self.run(KeyStore)

    async def exposition(self) -> str:
        """Prometheus counters of usage per owner and model; empty before there is a database."""
        if self._conn is None and not self.path.exists():
            return ""
        rows = await self.run(counters)
        families = []
        for name, attr, help_text in _COUNTERS:
            samples = [
                Sample(
                    name, {"owner": r.group["owner"], "model": r.group["model"]}, getattr(r, attr)
                )
                for r in rows
            ]
            families.append(Family(name, "counter", help_text, samples))
        return render(families)


def _labels(group: dict[str, str]) -> dict[str, str]:
    return {"owner": group["owner"], "model": group["model"]}
