"""The control plane attacked from outside, as in issue 11 (items 4-10 and 12): the real daemon as
a subprocess, stand-in engines, raw sockets where a polite HTTP client would hide the attack."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.daemon_harness import (
    TOPOLOGIES,
    Daemon,
    engine_pids,
    free_ports,
    model,
    wait_until,
    write_secret,
)

pytestmark = pytest.mark.slow

ADMIN, ALICE = "adm-secret-1", "tok-alice-1"
MB = 1024 * 1024


def secured(daemons: Callable[..., Daemon], tmp_path: Path, n_models: int = 1, **kw: Any) -> Daemon:
    """A daemon with an admin token; model 'alice' (and m1, m2 ...) with alice's token."""
    admin = write_secret(tmp_path / "admin.token", ADMIN)
    alice = write_secret(tmp_path / "alice.token", ALICE)
    ports = free_ports(n_models)
    models = {"alice": model(ports[0], token_file=str(alice))}
    models.update({f"m{i}": model(p) for i, p in enumerate(ports[1:], 1)})
    orchestrator = {"admin_token_file": str(admin), **kw.pop("orchestrator", {})}
    return daemons(models, orchestrator=orchestrator, token=ADMIN, **kw)


def raw_request(d: Daemon, head: str, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send a request head (and maybe part of its body); return the daemon's complete answer."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        got = b""
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < _length(got):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def rss_mb(d: Daemon) -> float:
    assert d.proc is not None
    return float(psutil.Process(d.proc.pid).memory_info().rss) / MB


def restart_head(d: Daemon, length: int, token: str | None = None) -> str:
    auth = f"\r\nAuthorization: Bearer {token}" if token else ""
    return (
        f"POST /api/v1/models/alice/restart HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}{auth}"
    )


# ----- item 4: authenticate before any body is read; cap bodies -----


def test_unauthenticated_big_posts_are_refused_before_their_body(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = secured(daemons, tmp_path).start(wait_ready=["alice"])
    before = rss_mb(d)
    for _ in range(3):
        # Declares 100 MB, sends 1 MB: the answer must come without waiting for the rest.
        started = time.monotonic()
        answer = raw_request(d, restart_head(d, 100 * MB), b"{" + b" " * MB)
        assert time.monotonic() - started < 3
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b'{"error": "missing or wrong bearer token"}' in answer
        assert b"www-authenticate: bearer" in answer.lower()
    # Regression: three 100 MB posts took RSS from 59 to 254 MB.
    assert rss_mb(d) - before < 20


def test_a_body_past_the_cap_is_413_even_with_a_token(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = secured(daemons, tmp_path).start(wait_ready=["alice"])
    pid = d.status("alice")["pid"]
    answer = raw_request(d, restart_head(d, 100 * MB, ADMIN), b"{")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    # Chunked: no length up front, counted as it arrives.
    chunk = b"x" * 70_000
    head = restart_head(d, 0, ADMIN).replace("Content-Length: 0", "Transfer-Encoding: chunked")
    answer = raw_request(d, head, f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    # A normal restart body still works; nothing above touched the engine.
    assert d.status("alice")["pid"] == pid
    assert d.post("/api/v1/models/alice/restart", {"overrides": {}}).status_code == 202


def test_every_route_needs_the_token_before_anything_else(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = secured(daemons, tmp_path).start()
    schema = httpx.get(f"{d.url}/openapi.json", timeout=5).json()
    for path, ops in schema["paths"].items():
        for method in ops:
            url = d.url + path.replace("{name}", "alice")
            r = httpx.request(method, url, timeout=5, content=b"{}")
            expected = 200 if path == "/healthz" else 401
            assert r.status_code == expected, (method, path, r.text)
            if expected == 401:
                assert r.json() == {"error": "missing or wrong bearer token"}
    assert httpx.get(f"{d.url}/no/such/path", timeout=5).status_code == 401


# ----- item 7: no models on reload -----


def test_a_reload_to_an_empty_file_is_refused_unless_asked_for(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = secured(daemons, tmp_path).start(wait_ready=["alice"])
    pid = d.status("alice")["pid"]
    good = d.config_path.read_text()
    for text in ("", good.split("[defaults]")[0]):
        d.config_path.write_text(text)
        r = d.post("/api/v1/reload")
        assert r.status_code == 422, r.text
        assert d.status("alice")["pid"] == pid  # regression: every engine was stopped
    d.config_path.write_text(
        good.replace("[orchestrator]", "[orchestrator]\nallow_no_models = true", 1).split(
            "[models."
        )[0]
    )
    r = d.post("/api/v1/reload")
    assert r.status_code == 200 and r.json()["removed"] == ["alice"], r.text
    wait_until(lambda: engine_pids("alice") == [], 10, "alice's engine to stop")


# ----- item 8: overrides obey the shared-GPU cap -----


def test_a_student_cannot_overcommit_a_shared_gpu(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    share = {"share_gpu": True, "gpu_memory_utilization": 0.45}
    d = secured(daemons, tmp_path, n_models=2, topology=TOPOLOGIES / "h100-whole.toml")
    for m in d.models.values():
        m.update(share)
    d.write_config()
    d.start(wait_ready=["alice", "m1"])
    assert d.status("alice")["slice"]["uuid"] == d.status("m1")["slice"]["uuid"]
    r = d.post(
        "/api/v1/models/alice/restart", {"overrides": {"gpu_memory_utilization": 0.95}}, token=ALICE
    )
    # Regression: 202, which put the GPU at 1.4.
    assert r.status_code == 422, r.text
    assert "alice 0.95 + m1 0.45 = 1.40" in r.json()["error"]
    ok = {"overrides": {"gpu_memory_utilization": 0.5}}
    assert d.post("/api/v1/models/alice/restart", ok, token=ALICE).status_code == 202


# ----- item 10: bad input is a JSON error, never a 500 or a traceback -----


@pytest.mark.parametrize("env", ["HF_TOKEN=x", ["A=1"], 3])
def test_env_override_of_the_wrong_type_is_422(
    daemons: Callable[..., Daemon], tmp_path: Path, env: Any
) -> None:
    d = secured(daemons, tmp_path).start()
    r = d.post("/api/v1/models/alice/restart", {"overrides": {"env": env}})
    assert r.status_code == 422, r.text  # regression: 500
    assert r.json()["error"].startswith("overrides.env: Input should be a valid dictionary")


def test_bad_names_paths_and_config_files_answer_json_errors(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = secured(daemons, tmp_path).start(wait_ready=["alice"])
    pid = d.status("alice")["pid"]
    for path in ("/api/v1/models/a%2Fb", "/api/v1/models/a%2Fb/logs", "/api/v2/x"):
        r = d.get(path)
        assert r.status_code == 404 and "error" in r.json(), (path, r.text)  # was {"detail": ...}
    assert "error" in httpx.delete(f"{d.url}/api/v1/models", headers=d.headers()).json()
    good = d.config_path.read_bytes()
    bad_files = {
        "binary": bytes(range(256)) * 64,
        "latin-1": good + b"\n# caf\xe9\n",
        "nested": b"x = " + b"[" * 50_000 + b"]" * 50_000,
    }
    for what, content in bad_files.items():
        d.config_path.write_bytes(content)
        r = d.post("/api/v1/reload")
        assert r.status_code == 422 and str(d.config_path) in r.json()["error"], (what, r.text)
    assert d.status("alice")["pid"] == pid
    assert "Traceback" not in d.log()
