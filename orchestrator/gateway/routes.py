"""The routing table: served model name -> the engine serving it, with its state.

One writer (a RouteSource's refresh loop) swaps in a new immutable table; request handlers read
whichever table is current, so a lookup costs one dict access and never waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

READY = "ready"


@dataclass(frozen=True)
class Route:
    served_name: str  # what clients send as "model"
    name: str  # the model's table in models.toml
    url: str  # the engine's base URL, "http://127.0.0.1:19401"
    state: str  # the daemon's engine state: ready, starting, restarting, stopped, failed, ...
    reason: str | None = None  # why it is in that state, when not ready

    @property
    def ready(self) -> bool:
        return self.state == READY


@dataclass(frozen=True)
class RouteTable:
    routes: Mapping[str, Route]

    def get(self, served_name: str) -> Route | None:
        return self.routes.get(served_name)


EMPTY = RouteTable({})


def connect_host(host: str) -> str:
    """Where the gateway reaches an engine bound to `host` (a wildcard means this host)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def table_from_status(models: Iterable[Mapping[str, Any]]) -> RouteTable:
    """The table from the control plane's GET /api/v1/models. Two models with one served name
    are refused by `check` while the gateway is on; should one slip through (a reload), the one
    that is ready wins, so a request never goes to a stopped twin."""
    routes: dict[str, Route] = {}
    for m in models:
        route = Route(
            served_name=m["served_model_name"],
            name=m["name"],
            url=f"http://{connect_host(m['host'])}:{m['port']}",
            state=m["state"],
            reason=m.get("reason"),
        )
        held = routes.get(route.served_name)
        if held is None or (route.ready and not held.ready):
            routes[route.served_name] = route
    return RouteTable(routes)


def table_from_file(path: Path) -> RouteTable:
    """A fixed table for a gateway without a daemon: `[{"model": NAME, "url": URL}, ...]`."""
    try:
        items = json.loads(path.read_text())
        routes = {
            i["model"]: Route(i["model"], i["model"], i["url"].rstrip("/"), i.get("state", READY))
            for i in items
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a list of {{'model': ..., 'url': ...}}: {exc}") from None
    return RouteTable(routes)


def _bearer(token_file: Path | None) -> dict[str, str]:
    """Read at each poll (a few bytes): the admin rotates the token by rewriting the file."""
    token = token_file.read_text().strip() if token_file else None
    return {"Authorization": f"Bearer {token}"} if token else {}


class RouteSource:
    """Holds the current table; with a control plane URL, refreshes it from the daemon's status
    every `refresh_s`. While the daemon cannot be reached the last table stays: its engines
    outlive it, so requests keep flowing."""

    def __init__(self, table: RouteTable = EMPTY) -> None:
        self.table = table

    async def follow(
        self,
        session: aiohttp.ClientSession,
        control_url: str,
        token_file: Path | None,
        refresh_s: float,
    ) -> None:
        url = control_url.rstrip("/") + "/api/v1/models"
        timeout = aiohttp.ClientTimeout(total=max(refresh_s, 2.0))
        failing = False
        while True:
            try:
                async with session.get(url, headers=_bearer(token_file), timeout=timeout) as r:
                    r.raise_for_status()
                    self.table = table_from_status(await r.json())
                if failing:
                    log.info("gateway: the control plane answers again")
                failing = False
            except (
                aiohttp.ClientError,
                OSError,
                TimeoutError,
                ValueError,
                KeyError,
                TypeError,
            ) as exc:
                if not failing:  # one line per outage, not one per poll
                    log.warning("gateway: cannot read engine states from %s: %r", url, exc)
                failing = True
            await asyncio.sleep(refresh_s)
