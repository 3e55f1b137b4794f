"""A small client for the control plane, shared by the CLI and the measurement tools."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence, Set
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8700"
DEFAULT_TOKEN_FILE = Path("/etc/mig-orchestrator/admin.token")
READY = frozenset({"ready"})


def add_daemon_options(p: argparse.ArgumentParser) -> None:
    """--url and --token-file, for every command that talks to the daemon."""
    p.add_argument(
        "--url",
        default=os.environ.get("MIG_ORCH_URL", DEFAULT_URL),
        help="control plane URL (env MIG_ORCH_URL; default %(default)s)",
    )
    p.add_argument(
        "--token-file",
        default=os.environ.get("MIG_ORCH_TOKEN_FILE"),
        help="file holding a bearer token (env MIG_ORCH_TOKEN_FILE; else $MIG_ORCH_TOKEN, "
        "else /etc/mig-orchestrator/admin.token when readable)",
    )


class ControlError(Exception):
    """The control plane refused or could not be reached; the message says which and why."""


def resolve_token(token_file: str | None) -> str | None:
    """An explicit file, then $MIG_ORCH_TOKEN, then the admin token if this user can read it."""
    if token_file:
        try:
            return Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ControlError(f"cannot read token file {token_file}: {e.strerror or e}") from None
    if env := os.environ.get("MIG_ORCH_TOKEN"):
        return env.strip()
    try:
        return DEFAULT_TOKEN_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _show(show_env: bool) -> dict[str, str]:
    """env values are masked unless asked for (admin only)."""
    return {"show_env": "true"} if show_env else {}


class ControlClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, trust_env=False
        )

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ControlError(f"cannot reach the daemon at {self.url}: {e}") from None
        if r.status_code >= 400:
            try:
                msg = r.json().get("error", r.text)
            except ValueError:
                msg = r.text
            raise ControlError(f"{method} {path}: {r.status_code}: {msg}")
        return r.json()

    def models(self, show_env: bool = False) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/models", params=_show(show_env)))

    def model(self, name: str, show_env: bool = False) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/v1/models/{name}", params=_show(show_env)))

    def slices(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/slices"))

    def command(
        self, name: str, verb: str, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body = {"overrides": overrides} if overrides is not None else None
        return dict(self._call("POST", f"/api/v1/models/{name}/{verb}", json=body))

    def logs(self, name: str, tail: int) -> list[str]:
        return list(
            self._call("GET", f"/api/v1/models/{name}/logs", params={"tail": tail})["lines"]
        )

    def reload(self) -> dict[str, Any]:
        return dict(self._call("POST", "/api/v1/reload"))

    def wait_for(self, name: str, states: Set[str], timeout: float) -> dict[str, Any]:
        """Poll until the model reaches one of `states`; a `failed` state ends the wait early."""
        return self.settle([name], timeout, states)[name]

    def settle(
        self,
        names: Sequence[str] | None,
        timeout: float,
        states: Set[str] = READY,
        progress: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Poll until each named model (default: all) is in one of `states` or failed; returns
        their statuses by name. `progress` sees every poll's statuses."""
        deadline = time.monotonic() + timeout
        want = set(states) | {"failed"}
        while True:
            models = self.models() if names is None else [self.model(n) for n in names]
            if progress is not None:
                progress(models)
            if all(m["state"] in want for m in models):
                return {m["name"]: m for m in models}
            if time.monotonic() >= deadline:
                late = ", ".join(f"{m['name']} is {m['state']}" for m in models)
                raise ControlError(f"{late} after {timeout:g}s (wanted {'/'.join(sorted(states))})")
            time.sleep(0.2)
