"""What the control plane shows of each engine's standby and last start: the status fields, their
lines in the CLI (the Prometheus series are in metrics.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from orchestrator.engine.standby.slot import StandbyStatus
from orchestrator.engine.starts import StartRecord


class StandbyOut(BaseModel):
    enabled: bool
    state: Literal["off", "preparing", "ready", "unavailable"]
    pid: int | None
    rss_bytes: int | None  # host memory, read live (at most once a second)
    prepare_s: float | None  # how long its imports took
    reason: str | None


class LastStartOut(BaseModel):
    via: Literal["standby", "plain"]
    cause: Literal["start", "restart", "retry"]
    asked_at: str  # the command, or the failure a retry follows
    launched_at: str  # the spawn or the standby's trigger
    fork: bool
    ready_at: str | None
    launch_to_ready_s: float | None
    ask_to_ready_s: float | None


def _iso_ms(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat("T", "milliseconds")


def _s(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def standby_json(enabled: bool, st: StandbyStatus) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "state": st.state.value,
        "pid": st.pid,
        "rss_bytes": st.rss_bytes,
        "prepare_s": st.prepare_s,
        "reason": st.reason,
    }


def last_start_json(s: StartRecord | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "via": s.via,
        "cause": s.cause,
        "asked_at": _iso_ms(s.asked_at),
        "launched_at": _iso_ms(s.launched_at),
        "fork": s.fork,
        "ready_at": _iso_ms(s.ready_at),
        "launch_to_ready_s": _s(s.launch_to_ready_s),
        "ask_to_ready_s": _s(s.ask_to_ready_s),
    }


# ----- the CLI's view of a model's status JSON -----


def standby_cell(m: dict[str, Any]) -> str:
    """The STANDBY column: its state, and its memory once it holds some."""
    sb = m.get("standby")
    if sb is None:
        return "-"  # a daemon from before standbys
    if not sb.get("enabled"):
        return "disabled"
    rss = sb.get("rss_bytes")
    return f"{sb['state']} {rss >> 20}M" if rss else str(sb.get("state", "-"))


def detail_lines(m: dict[str, Any]) -> list[str]:
    """`status NAME`: the standby and the last start in words."""
    lines = []
    sb = m.get("standby") or {}
    if sb:
        parts = [sb["state"] if sb.get("enabled") else "disabled (standby = false)"]
        if sb.get("pid"):
            parts.append(f"pid {sb['pid']}")
        if sb.get("rss_bytes"):
            parts.append(f"RSS {sb['rss_bytes'] >> 20} MiB")
        if sb.get("prepare_s") is not None:
            parts.append(f"imports took {sb['prepare_s']:.1f} s")
        if sb.get("reason"):
            parts.append(sb["reason"])
        lines.append("standby: " + ", ".join(parts))
    start = m.get("last_start")
    if start:
        took = (
            f"ready {start['launch_to_ready_s']:.2f} s after the launch, "
            f"{start['ask_to_ready_s']:.2f} s after the {start['cause']}"
            if start.get("launch_to_ready_s") is not None
            else "not ready yet"
        )
        fork = ", EngineCore by fork" if start.get("fork") else ""
        lines.append(f"last start: {start['via']}{fork} ({start['launched_at']}), {took}")
    return lines
