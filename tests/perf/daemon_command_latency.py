"""What a start/stop call costs its caller now that its 202 waits for state.json on disk.

Run: .venv/bin/python -m tests.perf.daemon_command_latency [--calls 200] [--clients 1,4]
One daemon, 4 stand-in models; each client sends start and stop calls one after another on its
own model (`--calls` in all per run), timing each from send to 202. With several clients, calls
that arrive during one state write share the next.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.chaos import ENGINE_ENV
from tests.daemon_harness import Daemon, free_ports, standin_model
from tests.perf._fleet import load_avg, report, stats_ms

MODELS = 4


def _client(d: Daemon, name: str, calls: int, out: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        for i in range(calls):
            verb = "start" if i % 2 == 0 else "stop"
            t0 = time.perf_counter()
            r = client.post(f"{d.url}/api/v1/models/{name}/{verb}")
            out.append(time.perf_counter() - t0)
            assert r.status_code == 202, r.text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--clients", default="1,4")
    args = parser.parse_args()
    result: dict[str, Any] = {"load_avg_start": load_avg()}
    with tempfile.TemporaryDirectory(prefix="cmd-latency-") as tmp:
        ports = free_ports(MODELS)
        models = {
            f"m{i}": standin_model(p, autostart=False, env=ENGINE_ENV) for i, p in enumerate(ports)
        }
        d = Daemon(Path(tmp), models)
        d.start()
        try:
            for n in map(int, args.clients.split(",")):
                times: list[float] = []
                threads = [
                    threading.Thread(target=_client, args=(d, f"m{i}", args.calls // n, times))
                    for i in range(n)
                ]
                began = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - began
                result[f"clients_{n}"] = {
                    "latency": stats_ms(times),
                    "calls_per_s": round(len(times) / wall, 1),
                }
        finally:
            d.terminate()
    p50 = result["clients_1"]["latency"]["median_ms"] if "clients_1" in result else None
    report("daemon_command_latency", result, f"start/stop call median {p50} ms (one client)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
