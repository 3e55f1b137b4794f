"""uvicorn's httptools protocol with a deadline for each request head.

uvicorn closes a connection idle after an answer (timeout_keep_alive), but never one that has not
sent a complete request head: on a public address, sockets that connect and say nothing (or one
header byte a minute) would hold descriptors for ever. Here the head must be complete within the
deadline of connecting, or of its first byte after an answer.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadDeadline(HttpToolsProtocol):
    head_timeout_s: float  # set on the subclass protocol_class() makes
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._timer = self.loop.call_later(self.head_timeout_s, self._late)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self) -> None:
        self._timer = None
        self.transport.close()


def protocol_class(head_timeout_s: float) -> type[HttpToolsProtocol]:
    return type("HeadDeadlineProtocol", (_HeadDeadline,), {"head_timeout_s": head_timeout_s})
