"""The control plane under attack: memory after big unauthenticated posts, idle
sockets closed, descriptors under a socket flood with `ulimit -n 256`.

Run: .venv/bin/python -m tests.perf.control_plane_attack
Uses the real daemon with stand-in engines (tests/daemon_harness.py) and default settings, so it
also runs against an older checkout for a before/after comparison. Prints one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.daemon_harness import Daemon, free_ports, marked_pids, model, write_secret
from tests.perf._fleet import load_avg

MB = 1024 * 1024
TOKEN = "perf-admin-token"


def _daemon(root: Path, names: list[str], nofile: int | None = None) -> Daemon:
    admin = write_secret(root / "admin.token", TOKEN)
    ports = free_ports(len(names))
    models = {n: model(p) for n, p in zip(names, ports, strict=True)}
    return Daemon(
        root, models, orchestrator={"admin_token_file": str(admin)}, token=TOKEN, nofile=nofile
    )


def _rss_mb(d: Daemon) -> float:
    assert d.proc is not None
    return round(psutil.Process(d.proc.pid).memory_info().rss / MB, 1)


def _fds(d: Daemon) -> int:
    assert d.proc is not None
    return psutil.Process(d.proc.pid).num_fds()


def big_posts(root: Path, posts: int = 3, size: int = 100 * MB) -> dict[str, Any]:
    """POST `size` bytes without a token to .../restart, `posts` times; RSS before and after."""
    d = _daemon(root, ["alice"]).start(wait_ready=["alice"])
    try:
        before = _rss_mb(d)
        answers, seconds = [], []
        block = b" " * MB
        for _ in range(posts):
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
                head = (
                    "POST /api/v1/models/alice/restart HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
                )
                sent = 0
                with contextlib.suppress(OSError):  # the daemon may close or reset under us
                    s.sendall(head.encode())
                    while sent < size:
                        s.sendall(block)
                        sent += len(block)
                with contextlib.suppress(OSError):
                    answers.append(s.recv(64).split(b"\r\n")[0].decode())
            seconds.append(round(time.monotonic() - started, 2))
        time.sleep(1.0)
        return {
            "posts": posts,
            "bytes_each": size,
            "answers": answers,
            "seconds_each": seconds,
            "rss_mb_before": before,
            "rss_mb_after": _rss_mb(d),
        }
    finally:
        _stop(d)


def idle_sockets(root: Path, n: int = 200, window_s: float = 12.0) -> dict[str, Any]:
    """Open `n` sockets that send nothing; how many has the daemon closed within `window_s`?"""
    d = _daemon(root, ["alice"]).start(wait_ready=["alice"])
    try:
        socks = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(n)]
        fds_open = _fds(d)
        started = time.monotonic()
        closed_at: dict[int, float] = {}
        while len(closed_at) < n and time.monotonic() - started < window_s:
            live = [s for s in socks if s.fileno() not in closed_at]
            readable, _, _ = select.select(live, [], [], 0.2)
            for s in readable:
                with contextlib.suppress(OSError):
                    if s.recv(1) == b"":
                        closed_at[s.fileno()] = time.monotonic() - started
        for s in socks:
            s.close()
        times = sorted(closed_at.values())
        return {
            "sockets": n,
            "closed_within_window": len(closed_at),
            "window_s": window_s,
            "last_closed_after_s": round(times[-1], 2) if times else None,
            "daemon_fds_while_open": fds_open,
        }
    finally:
        _stop(d)


def flood(root: Path, nofile: int = 256, n: int = 300) -> dict[str, Any]:
    """`ulimit -n` on the daemon, two engines, `n` idle sockets; one engine is killed meanwhile."""
    d = _daemon(root, ["alice", "bob"], nofile=nofile).start(wait_ready=["alice", "bob"])
    try:
        victim = d.status("bob")["pid"]
        fds_before = _fds(d)
        socks = []
        for _ in range(n):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection(("127.0.0.1", d.port), timeout=2))
        time.sleep(0.5)
        fds_peak = _fds(d)
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        try:
            r = httpx.get(f"{d.url}/healthz", timeout=5)
            healthz = f"{r.status_code} in {time.monotonic() - started:.2f}s"
        except httpx.HTTPError as e:
            healthz = f"{type(e).__name__} after {time.monotonic() - started:.2f}s"
        time.sleep(12.0)
        fds_during = _fds(d)
        for s in socks:
            s.close()
        time.sleep(3.0)
        states = {}
        for name in ("alice", "bob"):
            s = d.get(f"/api/v1/models/{name}").json()
            states[name] = {"state": s["state"], "restarts": s["restarts"], "reason": s["reason"]}
        return {
            "nofile": nofile,
            "sockets_opened": len(socks),
            "daemon_fds_before": fds_before,
            "daemon_fds_peak": fds_peak,
            "daemon_fds_12s_later": fds_during,
            "daemon_fds_after": _fds(d),
            "healthz_during_flood": healthz,
            "models_after": states,
            "too_many_open_files_in_log": "Too many open files" in d.log(),
        }
    finally:
        _stop(d)


def _stop(d: Daemon) -> None:
    with contextlib.suppress(Exception):
        d.terminate()
    for pid in marked_pids(d.root):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def main() -> int:
    load_start = load_avg()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cp-attack-") as tmp:
        for name, fn in (("big_posts", big_posts), ("idle", idle_sockets), ("flood", flood)):
            root = Path(tmp) / name
            root.mkdir()
            result[name] = fn(root)
    result["load_avg_start"] = load_start
    result["load_avg_end"] = load_avg()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
