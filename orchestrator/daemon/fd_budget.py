"""File descriptors: the daemon takes what the host allows, and its control plane may hold only
what engines do not need, so a flood of sockets can never make an engine fail to start."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

WANTED_NOFILE = 65536  # as the unit's LimitNOFILE; engines inherit it (vLLM wants many)
# The daemon's own: NVML, state and log files, signals, sd_notify, the event loop, slack.
DAEMON_RESERVE = 64
# Per engine: its output pipe, log file (two during rotation), spawn pipes, the health probe and
# a metrics scrape, doubled for slack.
PER_ENGINE = 16
MAX_CONNECTIONS = 128  # far above what admins, students and Prometheus open at once
MIN_CONNECTIONS = 4


@dataclass(frozen=True)
class Budget:
    nofile: int
    max_connections: int
    # The accept loop takes up to `backlog` sockets per turn before any is refused, so the
    # control plane may briefly hold max_connections + 2 * backlog descriptors.
    backlog: int


def raise_nofile(wanted: int = WANTED_NOFILE) -> int:
    """Raise the soft RLIMIT_NOFILE toward `wanted` (never above the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, e)
    return soft


def budget(nofile: int, engines: int) -> Budget:
    """Connections the control plane may hold with `engines` engines under `nofile`."""
    room = nofile - DAEMON_RESERVE - PER_ENGINE * engines
    # max_connections + 2 * backlog (1.5 * max_connections) stays within 3/4 of the room.
    cap = max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, room // 2))
    if room // 2 < MIN_CONNECTIONS:
        log.warning(
            "only %d open files allowed (ulimit -n) for %d engines: raise LimitNOFILE, or "
            "engines may fail to start while the control plane is busy",
            nofile,
            engines,
        )
    return Budget(nofile=nofile, max_connections=cap, backlog=max(2, cap // 4))
