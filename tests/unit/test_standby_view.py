"""What status and the CLI show of a standby and of the last start, and its /metrics
series, from a real Engine on fake processes."""

from __future__ import annotations

from pathlib import Path

from orchestrator import prom_text
from orchestrator.engine.states import StandbyState, State
from orchestrator.http.api import ModelStatus, StatusView
from orchestrator.http.metrics import standby_families
from orchestrator.http.standby_view import (
    detail_lines,
    last_start_json,
    standby_cell,
    standby_json,
)
from tests.engine_host import engine_host, wait_for
from tests.unit.test_engine_standby import ON


async def test_status_shows_the_standby_and_how_the_last_start_went(tmp_path: Path) -> None:
    async with engine_host(tmp_path, **ON) as h:
        assert (
            standby_json(True, h.engine.status().standby)["state"] == "off"
            and last_start_json(h.engine.status().last_start) is None
        )
        await h.engine.start()
        await h.reach(State.READY)
        await wait_for(lambda: h.engine.standby.state is StandbyState.READY, "the standby")
        sb = standby_json(True, h.engine.status().standby)
        (proc,) = h.fake.standbys_alive()
        assert sb == {
            "enabled": True,
            "state": "ready",
            "pid": proc.pid,
            "rss_bytes": 600 << 20,
            "prepare_s": 0.0,
            "reason": None,
        }
        start = last_start_json(h.engine.status().last_start)
        assert start is not None and (start["via"], start["cause"]) == ("plain", "start")
        assert start["ready_at"] is not None and start["launch_to_ready_s"] >= 0
        assert start["ask_to_ready_s"] >= start["launch_to_ready_s"]
        # The REST model validates what the view serializes.
        status = StatusView("host").model(h.engine)
        assert isinstance(status, ModelStatus) and status.standby.pid == proc.pid

        shown = StatusView("host").model(h.engine).model_dump()
        assert standby_cell(shown) == "ready 600M"
        lines = detail_lines(shown)
        assert lines[0] == f"standby: ready, pid {proc.pid}, RSS 600 MiB, imports took 0.0 s"
        assert lines[1].startswith("last start: plain (") and "s after the start" in lines[1]

        families = standby_families([({"model": "m"}, h.engine.status())])
        page = prom_text.render(families).splitlines()
        assert 'mig_orchestrator_standby_state{model="m",state="ready"} 1.0' in page
        assert 'mig_orchestrator_standby_state{model="m",state="off"} 0.0' in page
        assert f'mig_orchestrator_standby_rss_bytes{{model="m"}} {float(600 << 20)}' in page
        assert any(
            ln.startswith('mig_orchestrator_model_last_start_seconds{model="m",via="plain"}')
            for ln in page
        )


def test_the_cli_says_when_standbys_are_off_or_impossible() -> None:
    off = {"standby": {"enabled": False, "state": "off", "pid": None, "rss_bytes": None}}
    assert standby_cell(off) == "disabled"
    assert detail_lines({**off, "last_start": None}) == ["standby: disabled (standby = false)"]
    why = "the engine command cannot be imported ahead: 'x' is not found"
    gone = {
        "standby": {
            "enabled": True,
            "state": "unavailable",
            "pid": None,
            "rss_bytes": None,
            "prepare_s": None,
            "reason": why,
        },
        "last_start": None,
    }
    assert standby_cell(gone) == "unavailable"
    assert detail_lines(gone) == [f"standby: unavailable, {why}"]
