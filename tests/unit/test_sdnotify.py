"""SdNotifier against a real AF_UNIX datagram socket, as systemd would listen on it."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.daemon.sd_notify import SdNotifier


def _recv(sock: socket.socket) -> dict[str, str]:
    lines = sock.recv(4096).decode().split("\n")
    return dict(line.split("=", 1) for line in lines)


def test_ready_with_status(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("2/2 models ready")
    assert _recv(sock) == {"READY": "1", "STATUS": "2/2 models ready"}


def test_each_message_kind(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": path})
    notifier.status("1/3 models ready\nsecond line")
    assert _recv(sock) == {"STATUS": "1/3 models ready second line"}
    notifier.stopping()
    assert _recv(sock) == {"STOPPING": "1"}
    notifier.watchdog()
    assert _recv(sock) == {"WATCHDOG": "1"}

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading("reloading models.toml")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = _recv(sock)
    assert fields["RELOADING"] == "1"
    assert fields["STATUS"] == "reloading models.toml"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    notifier.close()


def test_abstract_socket() -> None:
    name = f"mig-orch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        SdNotifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert _recv(sock) == {"READY": "1"}


def test_unset_socket_is_noop() -> None:
    notifier = SdNotifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog_interval() is None


def test_missing_socket_logs_and_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="orchestrator.daemon.sd_notify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    assert "sd_notify" in caplog.text


def test_full_receiver_does_not_block(notify_socket: tuple[socket.socket, str]) -> None:
    _, path = notify_socket
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": path})
    # Nobody reads: the receive queue fills and sends must fail fast rather than block.
    started = time.monotonic()
    results = [notifier.status("x" * 1024) for _ in range(2000)]
    assert time.monotonic() - started < 5
    assert results[0] is True
    assert results[-1] is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None, tmp_path: Path) -> None:
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "s"), **env})
    assert notifier.watchdog_interval() == expected
