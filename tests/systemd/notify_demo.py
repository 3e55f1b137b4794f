"""Minimal Type=notify service for the harness test: READY + STATUS, then watchdog pings.

Run inside the container as `python3 /repo/tests/systemd/notify_demo.py [--no-ping]`.
"""

from __future__ import annotations

import sys
import time

sys.path.insert(0, "/repo")

from orchestrator.daemon.sd_notify import SdNotifier


def main() -> int:
    notifier = SdNotifier.from_env()
    interval = notifier.watchdog_interval()
    notifier.ready(f"demo ready, watchdog every {interval} s")
    while True:
        time.sleep(interval or 1)
        if "--no-ping" not in sys.argv:
            notifier.watchdog()


if __name__ == "__main__":
    raise SystemExit(main())
