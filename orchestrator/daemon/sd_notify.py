"""sd_notify(3) over $NOTIFY_SOCKET: readiness, status text, reload/stop notices, watchdog."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SdNotifier:
    """Sends sd_notify messages to systemd; every method is a silent no-op outside systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SdNotifier:
        """Build from NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID (os.environ by default)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up finished (Type=notify leaves 'activating')."""
        return self._send("READY=1", _status_field(status))

    def status(self, text: str) -> bool:
        """Set the free-form StatusText shown by `systemctl status`."""
        return self._send(_status_field(text))

    def reloading(self, status: str | None = None) -> bool:
        """Announce a reload; MONOTONIC_USEC lets systemd >= 253 match it for Type=notify-reload."""
        # CLOCK_MONOTONIC is the clock systemd compares MONOTONIC_USEC against.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", _status_field(status))

    def stopping(self, status: str | None = None) -> bool:
        """Announce a graceful shutdown has begun."""
        return self._send("STOPPING=1", _status_field(status))

    def watchdog(self) -> bool:
        """Ping the service watchdog (WatchdogSec=)."""
        return self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC); None if no watchdog is armed."""
        if self._address is None or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, *fields: str | None) -> bool:
        """Send one datagram; returns False (after logging) instead of raising on any failure."""
        if self._address is None:
            return False
        payload = "\n".join(f for f in fields if f).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full or stuck socket must never block the daemon's event loop.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.warning("sd_notify %r to %r failed: %s", payload[:64], self._address, exc)
            return False
        return True


def _socket_address(address: str) -> str | bytes:
    """'@name' is a Linux abstract socket, i.e. a leading NUL byte."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


def _status_field(text: str | None) -> str | None:
    # A newline would start a new (bogus) assignment in the datagram.
    return None if text is None else "STATUS=" + " ".join(text.splitlines())


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC applies only if WATCHDOG_PID is unset or names this process."""
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        usec = int(raw)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", raw, pid)
        return None
    return usec if usec > 0 else None
