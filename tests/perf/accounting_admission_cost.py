"""CPU per request of keyed admission and accounting in-process: admit, then finish (both SQLite
writes committed), one at a time and 64 at once.

    .venv/bin/python -m tests.perf.accounting_admission_cost [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from orchestrator.accounting.admission import KeyedAdmission
from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import KeyStore
from orchestrator.accounting.scope import ModelRef
from orchestrator.gateway.admission import Outcome
from tests.perf.gateway_keys_throughput import NO_BINDING_LIMIT

BODY = {"prompt": "x", "max_tokens": 128, "stream": True}
OUTCOME = Outcome(200, 10, 128, 0.01, 0.5, None, True, "127.0.0.1:1", "r", "/v1/completions", "m")


async def measure(requests: int) -> list[dict[str, float]]:
    db = Path(tempfile.mkdtemp()) / "accounting.sqlite3"
    secret = KeyStore(connect(db)).create("bench", "student", NO_BINDING_LIMIT).secret
    gate = KeyedAdmission(db, lambda: (ModelRef("m", "m", "bench"),))

    async def one() -> None:
        grant = await gate.admit(secret, "m", BODY)
        await asyncio.sleep(0)  # the answer would stream here
        await grant.finish(OUTCOME)

    out = []
    for concurrency in (1, 64):
        wall, cpu = time.perf_counter(), time.process_time()  # process: the writer thread too
        for _ in range(0, requests, concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))
        out.append({
            "concurrency": concurrency,
            "wall_us_per_request": round((time.perf_counter() - wall) / requests * 1e6, 1),
            "cpu_us_per_request": round((time.process_time() - cpu) / requests * 1e6, 1),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        })  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
    await gate.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=3000)
    asyncio.run(measure(p.parse_args().requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
