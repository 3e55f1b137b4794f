"""Durable daemon state: atomic round trip, and a damaged file never keeps the daemon down."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from orchestrator.supervisor.store import STATE_FILE, DaemonState, EngineRecord, StateStore


def full_state() -> DaemonState:
    return DaemonState(
        assignments={"alice": "MIG-aaaa", "bob": "GPU-bbbb"},
        desired={"alice": "running", "bob": "stopped"},
        overrides={"alice": {"enable_prefix_caching": False, "env": {"X": "1"}}},
        engines={
            "alice": EngineRecord(
                pid=4242, pgid=4242, create_time=1764171234.56, slice_uuid="MIG-aaaa"
            ),
            "carol": EngineRecord(pid=77, pgid=70, create_time=1.0, slice_uuid=None),
        },
        standbys={"alice": EngineRecord(pid=5000, pgid=5000, create_time=2.0, slice_uuid=None)},
    )


def test_missing_file_is_an_empty_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path / "state")
    with caplog.at_level(logging.ERROR):
        assert store.load() == DaemonState()
    assert caplog.records == []


def test_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save(full_state())
    assert StateStore(tmp_path / "state").load() == full_state()


def test_save_replaces_the_previous_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(full_state())
    store.save(DaemonState(desired={"alice": "stopped"}))
    assert store.load() == DaemonState(desired={"alice": "stopped"})


def test_files_are_private_and_no_temp_file_is_left(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = StateStore(tmp_path / "state")
        store.save(full_state())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o750
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o640
    assert [p.name for p in (tmp_path / "state").iterdir()] == [STATE_FILE]


def test_file_is_plain_json(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(full_state())
    raw = json.loads(store.path.read_text())
    assert raw["engines"]["alice"] == {
        "pid": 4242,
        "pgid": 4242,
        "create_time": 1764171234.56,
        "slice_uuid": "MIG-aaaa",
    }
    assert raw["assignments"] == {"alice": "MIG-aaaa", "bob": "GPU-bbbb"}


def test_a_failed_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.save(full_state())

    def no_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError):
        store.save(DaemonState())
    monkeypatch.undo()
    assert store.load() == full_state()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"assignments": {"alice": "MIG-a"}',  # cut short by a crash mid-write
        b"\xff\xfe\x00garbage",
        b"[]",
        b'"just a string"',
        b"[" * 1001 + b"]" * 1001,
    ],
)
def test_corrupt_file_is_an_empty_state_with_an_error_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    store = StateStore(tmp_path)
    store.path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="orchestrator.supervisor.store"):
        assert store.load() == DaemonState()
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert str(store.path) in record.getMessage()
    assert "starting without saved state" in record.getMessage()
    # Kept for the admin beside the state file, readable by the daemon's user only.
    if content:
        [side] = tmp_path.glob(f"{STATE_FILE}.rejected-*")
        assert side.read_bytes() == content and stat.S_IMODE(side.stat().st_mode) == 0o600
    # The damaged file is overwritten by the next save, and that state loads again.
    store.save(full_state())
    assert store.load() == full_state()


def test_unreadable_file_is_an_empty_state_with_an_error_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(tmp_path)
    store.path.mkdir()  # reading a directory fails with an OSError, even as root
    with caplog.at_level(logging.ERROR, logger="orchestrator.supervisor.store"):
        assert store.load() == DaemonState()
    assert "is unreadable" in caplog.text


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # os.write may write less than asked (a full disk does that before it fails outright).
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:7]))

    store = StateStore(tmp_path)
    monkeypatch.setattr(os, "write", short_write)
    store.save(full_state())
    monkeypatch.undo()
    assert store.load() == full_state()


def test_leftovers_name_standbys_apart_from_engines() -> None:
    state = full_state()
    assert state.leftovers() == {
        "alice": state.engines["alice"],
        "carol": state.engines["carol"],
        "alice (standby)": state.standbys["alice"],
    }


def test_a_state_file_from_before_standbys_loads(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text(json.dumps({"desired": {"alice": "running"}, "engines": {}}))
    assert store.load() == DaemonState(desired={"alice": "running"})
