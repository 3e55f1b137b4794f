"""state.json checked as a whole: a record of the wrong type or shape is logged and set aside in
a side file for the admin, and the rest of the state is used."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine.process import ProcessId
from orchestrator.supervisor.store import STATE_FILE, DaemonState, EngineRecord, StateStore

GOOD = {"pid": 302, "pgid": 302, "create_time": 1.5, "slice_uuid": None}
NESTED: Any = []
for _ in range(40):
    NESTED = [NESTED]

BAD = {
    "pid as text": ("engines", {**GOOD, "pid": "302"}),
    "pgid as text": ("engines", {**GOOD, "pgid": "x"}),
    "create_time as text": ("standbys", {**GOOD, "create_time": "x"}),
    "negative pid": ("engines", {**GOOD, "pid": -5}),
    "pid past pid_max": ("engines", {**GOOD, "pid": 2**40}),
    "a bool for a pid": ("engines", {**GOOD, "pid": True}),
    "a field missing": ("engines", {"pid": 1}),
    "a field unknown": ("engines", {**GOOD, "from_a_newer_version": 1}),
    "a desired state unknown": ("desired", "paused"),
    "an assignment not text": ("assignments", 5),
    "overrides not a table": ("overrides", 3),
    "overrides 40 deep": ("overrides", {"env": NESTED}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_record_is_set_aside_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    section, bad = BAD[case]
    store = StateStore(tmp_path)
    raw = {
        "desired": {"bob": "running"},
        "engines": {"bob": GOOD},
        section: {**({"bob": GOOD} if section == "engines" else {}), "alice": bad},
    }
    if section == "desired":
        raw["desired"] = {"bob": "running", "alice": bad}
    store.path.write_text(json.dumps(raw))
    with caplog.at_level(logging.ERROR, logger="orchestrator.supervisor.store"):
        state = store.load()
    assert state.desired == {"bob": "running"}
    assert state.engines == {"bob": EngineRecord(302, 302, 1.5, None)}
    assert f"{section}.alice set aside" in caplog.text
    [side] = tmp_path.glob(f"{STATE_FILE}.rejected-*")
    assert stat.S_IMODE(side.stat().st_mode) == 0o600
    kept = json.loads(side.read_text())
    assert list(kept) == [f"{section}.alice"] and kept[f"{section}.alice"]["error"]
    assert str(side) in caplog.text


def test_a_whole_section_of_the_wrong_type_is_set_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text(json.dumps({"assignments": 5, "desired": {"bob": "stopped"}}))
    assert store.load() == DaemonState(desired={"bob": "stopped"})


@pytest.mark.parametrize("pid", [-5, 0, 2**70])
def test_a_pid_that_names_no_process_is_not_alive(pid: int) -> None:
    assert not ProcessId(pid, 1.0).alive()
    assert ProcessId.of(pid) is None
