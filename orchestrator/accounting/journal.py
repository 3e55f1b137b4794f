"""One writer thread per gateway: queued writes go to SQLite in batches, one transaction per batch.

The event loop never waits on the disk to admit a request. A caller that needs a write to be
durable (a request's final usage) awaits the future `submit` returns; it resolves once the
batch holding the write has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.accounting.database import connect

log = logging.getLogger(__name__)

Write = Callable[[sqlite3.Connection], None]
_STOP = object()
RETRY_S = 0.5


class Journal:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="accounting-journal", daemon=True)
        self._conn = connect(path)  # migrates here, before the first request
        self._thread.start()

    def submit(self, write: Write) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((write, fut))
        return fut

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            items = [b for b in batch if b is not _STOP]
            if items:
                self._commit(items)  # type: ignore[arg-type]
            if stop:
                return

    def _commit(self, items: list[tuple[Write, asyncio.Future[None]]]) -> None:
        # Usage already served must not be dropped: a locked or full disk is retried until
        # it clears, and the log says why meanwhile.
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for write, _ in items:
                    write(self._conn)
                self._conn.execute("COMMIT")
                break
            except sqlite3.Error as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                log.error("accounting database %s: %s; retrying in %.1fs", self._path, e, RETRY_S)
                time.sleep(RETRY_S)
        for _, fut in items:
            # A closed loop means nobody waits for this write any more.
            with contextlib.suppress(RuntimeError):
                fut.get_loop().call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
