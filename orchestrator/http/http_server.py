"""The control plane's HTTP server: uvicorn (h11) with a bounded number of connections and a
deadline for every request head, so idle or slow sockets cannot pile up.

uvicorn closes an idle keep-alive connection after a response, but never one that has not sent
a complete request: a socket that connects and says nothing (or one header byte a minute) would
hold a descriptor for ever. Here each connection must deliver a request head within
`header_timeout_s` of connecting or of its last response. Past `max_connections`, a new
connection closes the one that has waited longest for a request head (a flood of idle sockets
then evicts itself, while a client that sends its request at once is served); only when every
connection is busy with a request is the new one dropped. The body's deadline is RequestGuard's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


@dataclass
class ConnectionLimits:
    """Shared by every connection of one server; the daemon lowers max_connections when the
    descriptors left for the control plane shrink (more engines after a reload)."""

    max_connections: int
    header_timeout_s: float  # connect (or last response) -> complete request head
    keep_alive_s: int = 5  # idle after a response (uvicorn's own timer)
    _last_warning: float = 0.0

    def warn_full(self, action: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:  # one line per 10 s under a flood, not one per socket
            self._last_warning = now
            log.warning(
                "control plane: %d connections open (the most allowed): %s",
                self.max_connections,
                action,
            )


class _BoundedH11(H11Protocol):
    limits: ConnectionLimits  # set on the subclass protocol_class() makes

    _head_timer: asyncio.TimerHandle | None = None
    _awaited: object = None  # the request cycle that was current when the timer was armed
    _armed_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        if len(self.connections) <= self.limits.max_connections:
            return
        waiting = [c for c in self.connections if isinstance(c, _BoundedH11) and c.waiting()]
        oldest = min(waiting, key=lambda c: c._armed_at)
        if oldest is not self:
            self.limits.warn_full("closing those idle longest")
        else:
            self.limits.warn_full("every one is busy with a request: refusing new ones")
        # abort() frees the descriptor now; connection_lost forgets the rest.
        oldest.transport.abort()

    def waiting(self) -> bool:
        """Open, and no request under way: idle, or still sending its request head."""
        return self.cycle is self._awaited and not self.transport.is_closing()

    def on_response_complete(self) -> None:
        self._arm()  # before super(): it may start a pipelined request at once
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._awaited = self.cycle
        self._armed_at = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self.waiting():  # the peer is idle or trickling its head
            self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[H11Protocol]:
    return type("BoundedH11Protocol", (_BoundedH11,), {"limits": limits})


class ControlServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon decides how to shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_server(
    app: ASGIApp, host: str, port: int, limits: ConnectionLimits, backlog: int
) -> ControlServer:
    return ControlServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            backlog=backlog,
            http=protocol_class(limits),
            timeout_keep_alive=limits.keep_alive_s,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
