"""Restart -> ready and crash -> ready through the daemon, standby on and off (issue 16 item 4).

Its own daemon, one model, variants switched by a reload:

    .venv/bin/python -m tests.perf.restart_time --engine standin [--rounds 10]
    flock /tmp/heavy.lock .venv/bin/python -m tests.perf.restart_time --engine vllm [--rounds 3]

Models of a running daemon (e.g. on a GPU host, one model per variant in models.toml; run as a
user that may kill the engines):

    python -m tests.perf.restart_time --url http://127.0.0.1:8700 --token-file T \\
        --model plain --model fork --model standby --model standby-fork

restart: POST restart -> the new engine is ready. crash: SIGKILL of the engine's main process ->
the new engine is ready. Both are timed by this client (polling status) and by the daemon itself
(status last_start: from the command or the failure to ready, and from the launch or the
standby's trigger to ready). Before each measurement the model is ready and, with standby on,
so is its standby: what a student who restarts after a while gets. Variants run round-robin, each
round starting with the next one; the load average is printed beside every run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.daemon_harness import Daemon, cpu_vllm_daemon, free_ports, wait_until

MODEL = "m"
# name -> (standby, engine_fork). On the CPU engine fork changes nothing (vLLM's CPU platform
# forces spawn: docs/standby.md), so only --fork adds those variants.
VARIANTS = {"plain": (False, False), "standby": (True, False)}
FORK_VARIANTS = {"fork": (False, True), "standby+fork": (True, True)}


@dataclass
class Target:
    """One model to measure: its daemon's URL, and how to put it into a variant (own daemon)."""

    url: str
    token: str | None
    name: str
    label: str
    apply: Callable[[], None] | None = None  # reconfigure the own daemon for this variant
    poll_s: float = 0.05
    timeout_s: float = 900

    def status(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = httpx.get(f"{self.url}/api/v1/models/{self.name}", headers=headers, timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def post(self, verb: str) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = httpx.post(f"{self.url}/api/v1/models/{self.name}/{verb}", headers=headers, timeout=10)
        assert r.status_code == 202, r.text

    def wait(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.status()
            if s["state"] == "failed":
                raise RuntimeError(f"{self.name} failed: {s['reason']}")
            return s if pred(s) else None

        return dict(wait_until(check, self.timeout_s, f"{self.name}: {what}", self.poll_s))

    def settled(self) -> dict[str, Any]:
        """Ready, and with standby on, its standby ready too (or impossible)."""
        return self.wait(
            lambda s: (
                s["state"] == "ready"
                and (
                    not s["standby"]["enabled"] or s["standby"]["state"] in ("ready", "unavailable")
                )
            ),
            "ready, and its standby",
        )


def _started_after(before: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    old = (before["last_start"] or {}).get("launched_at")

    def new_and_ready(s: dict[str, Any]) -> bool:
        start = s["last_start"] or {}
        return s["state"] == "ready" and start.get("launched_at") != old and bool(start["ready_at"])

    return new_and_ready


def measure(t: Target, kind: str) -> dict[str, Any]:
    before = t.settled()
    row: dict[str, Any] = {
        "variant": t.label,
        "kind": kind,
        "load1": round(os.getloadavg()[0], 2),
        "standby": before["standby"]["state"] if before["standby"]["enabled"] else "off",
    }
    t0 = time.monotonic()
    if kind == "restart":
        t.post("restart")
    else:
        os.kill(before["pid"], signal.SIGKILL)
    after = t.wait(_started_after(before), "the new engine ready")
    start = after["last_start"]
    row.update(
        seen_s=round(time.monotonic() - t0, 3),
        daemon_s=start["ask_to_ready_s"],
        launch_to_ready_s=start["launch_to_ready_s"],
        via=start["via"],
        fork=start["fork"],
    )
    return row


def summary(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("restart", "crash"):
        plain = None
        for label in labels:
            mine = [r for r in rows if r["variant"] == label and r["kind"] == kind]
            if not mine:
                continue
            med = statistics.median(r["seen_s"] for r in mine)
            plain = med if plain is None else plain
            out[f"{kind} {label}"] = {
                "median_s": round(med, 3),
                "vs_first": round(med / plain, 2),
                "daemon_median_s": round(statistics.median(r["daemon_s"] for r in mine), 3),
                "launch_to_ready_median_s": round(
                    statistics.median(r["launch_to_ready_s"] for r in mine), 3
                ),
                "runs_s": [r["seen_s"] for r in mine],
                "load1": [r["load1"] for r in mine],
                "via": sorted({r["via"] for r in mine}),
            }
    return out


@contextlib.contextmanager
def own_daemon(engine: str, labels: list[str]) -> Iterator[list[Target]]:
    """A daemon with one model; each variant's Target reloads it into that variant."""
    variants = {**VARIANTS, **FORK_VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (port,) = free_ports(1)
        orch = {"backoff_initial_s": 0.05, "max_restarts": 1000, "standby": False}
        if engine == "standin":
            d = Daemon(root, {MODEL: {"model": "m", "port": port, "host": "127.0.0.1"}})
            d.orchestrator.update(orch)
            poll, timeout = 0.005, 60.0
        else:
            from orchestrator.tooling import cpu_venv

            venv = cpu_venv.ensure_cpu_venv(cpu_venv.default_venv()).parent.parent
            model_dir = cpu_venv.build_tiny_model(venv, cpu_venv.default_tiny_model_dir(seed=0))
            d = cpu_vllm_daemon(
                root,
                venv,
                [(MODEL, MODEL, port, "3g.40gb", True, model_dir)],
                orchestrator=orch,
            )
            poll, timeout = 0.1, 900.0
        base = d.config_text

        def variant(label: str) -> Callable[[], None]:
            standby, fork = variants[label]

            def apply() -> None:
                if base is None:
                    d.orchestrator["standby"] = standby
                    d.models[MODEL]["engine_fork"] = fork
                else:  # the model's table is the last one: a line at the end is in it
                    d.config_text = base.replace(
                        "standby = false", f"standby = {json.dumps(standby)}"
                    )
                    d.config_text += f"engine_fork = {json.dumps(fork)}\n"
                d.write_config()
                r = httpx.post(f"{d.url}/api/v1/reload", timeout=60)
                assert r.status_code == 200, r.text

            return apply

        d.start()
        try:
            yield [Target(d.url, None, MODEL, lb, variant(lb), poll, timeout) for lb in labels]
        finally:
            d.terminate(timeout=120)


def run(targets: list[Target], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(rounds):
        # Each round starts with another variant: a load that drifts does not favour one.
        for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
            if t.apply is not None:
                t.apply()
            for kind in ("restart", "crash"):
                row = measure(t, kind)
                rows.append(row)
                print(
                    f"round {i + 1}: " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True
                )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engine", choices=("standin", "vllm"), help="measure with an own daemon")
    ap.add_argument("--fork", action="store_true", help="own daemon: add the engine_fork variants")
    ap.add_argument("--url", help="measure models of a running daemon instead")
    ap.add_argument("--token-file", help="the admin token, for --url")
    ap.add_argument("--model", action="append", default=[], help="a model to measure (--url)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    if args.url:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
        targets = [Target(args.url, token, m, m) for m in args.model]
        rows = run(targets, args.rounds)
        labels = args.model
    elif args.engine:
        labels = [*VARIANTS, *(FORK_VARIANTS if args.fork else {})]
        with own_daemon(args.engine, labels) as targets:
            rows = run(targets, args.rounds)
    else:
        ap.error("give --engine or --url with --model")
    result = {
        "engine": args.engine or args.url,
        "rows": rows,
        "median": summary(rows, labels),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print(
        f"{result['engine']}: to ready again, median of {args.rounds} (client-seen; daemon's own)"
    )
    for name, v in result["median"].items():
        launch = v["launch_to_ready_median_s"]
        print(
            f"  {name:22} {v['median_s']:8.3f} s = {v['vs_first']:.2f}x {labels[0]}"
            f"  (daemon {v['daemon_median_s']:.3f} s, launch->ready {launch:.3f} s,"
            f" via {'/'.join(v['via'])}, load1 {v['load1']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
