"""SdNotifier under a real systemd: Type=notify readiness, status text and the watchdog."""

from __future__ import annotations

import pytest
from nspawn_harness import Container, wait_for

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

UNIT = """\
[Service]
Type=notify
NotifyAccess=main
WatchdogSec=2
Restart=no
ExecStart=/usr/bin/python3 /repo/tests/systemd/notify_demo.py {args}
"""


def _show(container: Container, unit: str, *props: str) -> dict[str, str]:
    out = container.run(["systemctl", "show", unit, "-p", ",".join(props)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _install(container: Container, unit: str, args: str) -> None:
    container.path(f"/etc/systemd/system/{unit}").write_text(UNIT.format(args=args))
    container.run(["systemctl", "daemon-reload"])


def test_ready_status_and_watchdog_pings(container: Container) -> None:
    _install(container, "notify-demo.service", "")
    # `systemctl start` returns only after READY=1 for Type=notify.
    container.run(["systemctl", "start", "notify-demo.service"], timeout=30)
    state = _show(container, "notify-demo.service", "ActiveState", "SubState", "StatusText")
    assert state == {
        "ActiveState": "active",
        "SubState": "running",
        "StatusText": "demo ready, watchdog every 1.0 s",
    }
    # Several watchdog periods later it is still alive, so the pings arrive.
    first = _show(container, "notify-demo.service", "WatchdogTimestampMonotonic")
    wait_for(
        lambda: _show(container, "notify-demo.service", "WatchdogTimestampMonotonic") != first,
        10,
        "a watchdog ping",
    )
    container.run(["systemctl", "stop", "notify-demo.service"])


def test_missing_pings_trip_the_watchdog(container: Container) -> None:
    _install(container, "notify-silent.service", "--no-ping")
    container.run(["systemctl", "start", "notify-silent.service"], timeout=30)
    result = wait_for(
        lambda: _show(container, "notify-silent.service", "Result").get("Result") == "watchdog",
        15,
        "systemd to kill the service that stopped pinging",
    )
    assert result
