"""Cold start, restart and stop times of one real vLLM CPU engine under the daemon (medians).

    .venv/bin/python tests/perf/vllm_lifecycle.py [--cycles 3] [--json FILE]

Each cycle: POST start -> ready (cold start), POST restart -> ready, POST stop -> stopped. The
times are what an admin sees through the control plane, daemon included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from orchestrator.tooling import cpu_venv
from tests.daemon_harness import Daemon, cpu_vllm_daemon, free_ports


def timed(d: Daemon, verb: str, want: str) -> float:
    t0 = time.monotonic()
    r = d.post(f"/api/v1/models/tiny/{verb}")
    assert r.status_code == 202, r.text
    d.wait_state("tiny", want, timeout=900)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args()
    venv = cpu_venv.ensure_cpu_venv(cpu_venv.default_venv()).parent.parent
    model_dir = cpu_venv.build_tiny_model(venv, cpu_venv.default_tiny_model_dir(seed=0))
    with tempfile.TemporaryDirectory() as tmp:
        (port,) = free_ports(1)
        d = cpu_vllm_daemon(
            Path(tmp),
            venv,
            [("tiny", "tiny", port, "3g.40gb", True, model_dir)],
            orchestrator={"standby": False},  # plain vLLM; restart_time.py compares
        )
        d.config_text = (d.config_text or "").replace(
            'profile = "3g.40gb"', 'profile = "3g.40gb"\nautostart = false'
        )
        d.write_config()
        d.start()
        rows = []
        try:
            for i in range(args.cycles):
                row = {
                    "cold_start_s": timed(d, "start", "ready"),
                    "restart_s": timed(d, "restart", "ready"),
                    "stop_s": timed(d, "stop", "stopped"),
                }
                rows.append(row)
                print(
                    f"cycle {i + 1}: " + "  ".join(f"{k}={v:.2f}" for k, v in row.items()),
                    flush=True,
                )
        finally:
            d.terminate(timeout=120)
    medians = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
    result = {"cycles": rows, "median": medians, "cpus": os.cpu_count(), "load": os.getloadavg()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print(
        f"vLLM CPU tiny engine, median of {len(rows)}: cold start {medians['cold_start_s']} s, "
        f"restart {medians['restart_s']} s, stop {medians['stop_s']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
