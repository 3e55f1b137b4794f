"""Run one bench plan against several settings of a model, restarting it through the daemon.

The model's original overrides are put back at the end, also after an error or an interrupt.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.bench.runner import Progress, Target
from orchestrator.bench.stats import BenchReport
from orchestrator.client import ControlClient, ControlError

# A new KEY=VALUE starts at a comma followed by an identifier and '=', so JSON values keep commas.
_SPLIT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*=)")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_EQ = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*=")
# States an engine passes through after a restart: seeing one proves the restart began.
_RESTARTING = {"stopping", "stopped", "starting", "backoff", "unhealthy"}


class VariantError(Exception):
    """A variant's text is not `[LABEL:]KEY=VALUE[,KEY=VALUE...]`."""


class NotReady(Exception):
    """The engine failed or did not become ready after a restart; the message says which."""


@dataclass(frozen=True)
class Variant:
    label: str
    settings: dict[str, Any]


def parse_settings(text: str) -> dict[str, Any]:
    """`k=v,k2=v2`: values are JSON when they parse (true, 0.5, ["--x"]), else plain strings."""
    settings: dict[str, Any] = {}
    for item in _SPLIT.split(text):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise VariantError(f"{item!r} is not KEY=VALUE (KEY a vLLM setting name)")
        settings[key] = _value(raw)
    return settings


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_variant(text: str) -> Variant:
    """`LABEL:KEY=VALUE,...` or `KEY=VALUE,...` (labelled by its text); `LABEL:` alone is a
    baseline that keeps the model's own settings."""
    label, sep, rest = text.partition(":")
    if sep and not rest.strip():
        return Variant(label.strip() or text, {})
    # A ':' inside a value (`served_model_name=a:b`) is not a label separator.
    if sep and _KEY_EQ.match(rest):
        return Variant(label.strip() or rest, parse_settings(rest))
    return Variant(text, parse_settings(text))


def _sweep_values(raw: str) -> list[Any]:
    try:
        values = json.loads(f"[{raw}]")  # 0.5,0.7 / true,false / "a","b"
    except ValueError:
        values = [_value(v) for v in raw.split(",")]
    return list(values)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def sweep_variants(sweeps: list[str]) -> list[Variant]:
    """`KEY=V1,V2,...` per sweep; several sweeps give every combination."""
    axes: list[list[tuple[str, Any]]] = []
    for sweep in sweeps:
        key, sep, raw = sweep.partition("=")
        if not sep or not _KEY.fullmatch(key.strip()) or not raw.strip():
            raise VariantError(f"--sweep takes KEY=V1,V2,..., got {sweep!r}")
        axes.append([(key.strip(), v) for v in _sweep_values(raw)])
    if not axes:
        return []
    return [
        Variant(" ".join(f"{k}={_show(v)}" for k, v in combo), dict(combo))
        for combo in itertools.product(*axes)
    ]


class ControlPlane(Protocol):
    """The daemon calls compare needs."""

    async def model(self, name: str, show_env: bool = False) -> dict[str, Any]: ...

    async def command(
        self, name: str, verb: str, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]: ...


class ThreadedControl:
    """ControlPlane over the synchronous ControlClient, each call in a worker thread."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client

    async def model(self, name: str, show_env: bool = False) -> dict[str, Any]:
        return await asyncio.to_thread(self.client.model, name, show_env)

    async def command(
        self, name: str, verb: str, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self.client.command, name, verb, overrides)


@dataclass
class VariantResult:
    label: str
    settings: dict[str, Any]
    overrides: dict[str, Any]  # what the engine was restarted with
    status: str  # "ok", "failed" (never ready) or "interrupted"
    reason: str | None = None
    report: BenchReport | None = None


@dataclass
class CompareReport:
    model: str
    original_overrides: dict[str, Any] = field(default_factory=dict)
    variants: list[VariantResult] = field(default_factory=list)
    restored: bool = False
    restore_error: str | None = None


async def restart_and_wait(
    control: ControlPlane,
    name: str,
    overrides: dict[str, Any],
    timeout_s: float,
    poll_s: float = 0.25,
) -> dict[str, Any]:
    """Restart `name` with `overrides` and return its status once the new engine is ready.

    The daemon restarts asynchronously, so a "ready" right after the POST may be the old engine.
    A state counts once the restart shows: a restart state seen, a new pid, or the new overrides
    in place (the daemon swaps them in only after the old engine stopped).
    """
    before = await control.model(name)
    status = await control.command(name, "restart", overrides)
    deadline = time.monotonic() + timeout_s
    changed = before.get("overrides") != overrides
    fresh = False
    while True:
        state = status["state"]
        fresh = (
            fresh
            or state in _RESTARTING
            or status.get("pid") not in (None, before.get("pid"))
            or (changed and status.get("overrides") == overrides)
        )
        if fresh and state == "ready":
            return status
        if fresh and state == "failed":
            raise NotReady(f"{name} failed: {_reason(status)}")
        if time.monotonic() >= deadline:
            raise NotReady(
                f"{name} is {state} after {timeout_s:g} s, not ready ({_reason(status)})"
            )
        await asyncio.sleep(poll_s)
        status = await control.model(name)


def _reason(status: Mapping[str, Any]) -> str:
    last = status.get("last_exit") or {}
    return str(status.get("reason") or last.get("reason") or "no reason given")


Measure = Callable[[Target], Awaitable[BenchReport]]


async def run_compare(
    control: ControlPlane,
    name: str,
    variants: list[Variant],
    measure: Measure,
    report: CompareReport,
    *,
    api_key: str | None = None,
    ready_timeout_s: float = 900.0,
    progress: Progress,
) -> None:
    """Measure every variant into `report`; always restore the original overrides at the end."""
    original = await control.model(name)
    if (original.get("overrides") or {}).get("env"):
        # Masked in status; restoring needs the values (the admin's to see, and to set).
        original = await control.model(name, show_env=True)
    report.original_overrides = dict(original.get("overrides") or {})
    restarted = False
    try:
        for variant in variants:
            overrides = {**report.original_overrides, **variant.settings}
            result = VariantResult(variant.label, variant.settings, overrides, "failed")
            report.variants.append(result)
            progress(f"{variant.label}: restarting {name} with overrides {json.dumps(overrides)}")
            restarted = True
            try:
                status = await restart_and_wait(control, name, overrides, ready_timeout_s)
            except (NotReady, ControlError) as exc:  # e.g. 422 for a setting vLLM lacks
                result.reason = str(exc)
                progress(f"{variant.label}: {exc}")
                continue
            try:
                result.report = await measure(Target.from_status(status, api_key))
            except BaseException:
                result.status, result.reason = "interrupted", "interrupted while measuring"
                raise
            result.status = "ok"
    finally:
        if restarted:
            progress(f"restoring {name} to overrides {json.dumps(report.original_overrides)}")
            await _restore(control, name, original, report, ready_timeout_s)


async def _restore(
    control: ControlPlane,
    name: str,
    original: Mapping[str, Any],
    report: CompareReport,
    timeout_s: float,
) -> None:
    try:
        await restart_and_wait(control, name, report.original_overrides, timeout_s)
        if original.get("desired") == "stopped":
            await control.command(name, "stop")
        report.restored = True
    except Exception as exc:  # reported, never hides the error that brought us here
        report.restore_error = f"{type(exc).__name__}: {exc}"
