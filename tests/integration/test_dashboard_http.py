"""The dashboard's HTTP rules on the real daemon: log-in, cookie, CSRF, CSP, who sees what."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.http.dashboard.routes import CSP
from orchestrator.http.dashboard.sessions import COOKIE, CSRF_HEADER
from tests.daemon_harness import Daemon, free_ports, marked_pids, wait_until, write_secret
from tests.dashboard_host import ADMIN_TOKEN, STUDENT_TOKENS, dashboard_daemon, send_traffic

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = dashboard_daemon(tmp_path_factory.mktemp("dashboard-http"))
    d.start(wait_ready=["alice", "bob", "dave"])
    d.wait_state("carol", "failed")
    yield d
    d.terminate()
    for pid in marked_pids(d.root):
        os.kill(pid, signal.SIGKILL)


def client(d: Daemon) -> httpx.Client:
    return httpx.Client(base_url=d.url, timeout=10)


def logged_in(d: Daemon, token: str) -> tuple[httpx.Client, str]:
    """A client holding a session cookie, and the session's CSRF token."""
    c = client(d)
    r = c.post("/ui/api/login", json={"token": token})
    assert r.status_code == 200, r.text
    return c, r.json()["csrf"]


def test_pages_redirect_to_log_in_and_carry_the_security_headers(host: Daemon) -> None:
    c = client(host)
    assert c.get("/").headers["location"] == "/ui"
    r = c.get("/ui")
    assert (r.status_code, r.headers["location"]) == (303, "/ui/login")
    page = c.get("/ui/login")
    assert page.status_code == 200 and "dashboard.js" in page.text
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text  # the one script is a file: the CSP allows nothing inline
    js = c.get("/ui/static/dashboard.js")
    assert js.headers["content-type"].startswith("text/javascript")
    again = c.get("/ui/static/dashboard.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert c.get("/ui/static/../api.py").status_code == 404
    assert c.get("/ui/static/nothing.js").status_code == 404
    # The dashboard is not part of the REST API's schema (nor of what the fuzz test sends).
    assert not [p for p in c.get("/openapi.json").json()["paths"] if p.startswith("/ui")]
    assert c.get("/ui/api/overview").status_code == 401


def test_log_in_sets_a_strict_httponly_session_cookie_never_the_token(host: Daemon) -> None:
    c = client(host)
    bad = c.post("/ui/api/login", json={"token": "not-a-token"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers
    r = c.post("/ui/api/login", json={"token": ADMIN_TOKEN})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attrs
    assert ADMIN_TOKEN not in cookie and ADMIN_TOKEN not in r.text
    assert r.json()["role"] == "admin" and len(r.json()["csrf"]) >= 32
    # A token is never taken from the URL: the body is required.
    assert client(host).post(f"/ui/api/login?token={ADMIN_TOKEN}").status_code == 422
    # Another site's page cannot log a visitor in.
    evil = client(host).post(
        "/ui/api/login", json={"token": ADMIN_TOKEN}, headers={"Origin": "http://evil.example"}
    )
    assert evil.status_code == 403 and "set-cookie" not in evil.headers
    assert c.get("/ui/api/overview").status_code == 200
    c.post("/ui/api/logout", headers={CSRF_HEADER: r.json()["csrf"]})
    assert c.get("/ui/api/overview").status_code == 401


def test_every_action_needs_the_csrf_token_and_this_site(host: Daemon) -> None:
    c, csrf = logged_in(host, ADMIN_TOKEN)
    stop = "/ui/api/models/bob/stop"
    refused = [
        c.post(stop),
        c.post(stop, headers={CSRF_HEADER: "wrong"}),
        c.post(stop, headers={CSRF_HEADER: csrf, "Origin": "http://evil.example"}),
        c.post(stop, headers={CSRF_HEADER: csrf, "Sec-Fetch-Site": "cross-site"}),
        client(host).post(stop, headers={CSRF_HEADER: csrf}),  # the token without the cookie
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403, 401]
    assert host.status("bob")["state"] == "ready"
    assert c.post("/ui/api/logout").status_code == 403  # logging out is an action too
    same_site = {CSRF_HEADER: csrf, "Origin": host.url, "Sec-Fetch-Site": "same-origin"}
    r = c.post(stop, headers=same_site)
    assert r.status_code == 202 and r.json()["state"] in ("stopping", "stopped")
    host.wait_state("bob", "stopped")
    assert c.post("/ui/api/models/bob/start", headers=same_site).status_code == 202
    assert c.post("/ui/api/models/bob/remove", headers=same_site).status_code == 422
    host.wait_state("bob", "ready")


def test_a_student_sees_only_their_own_model(host: Daemon) -> None:
    c, csrf = logged_in(host, STUDENT_TOKENS["alice"])
    r = c.get("/ui")
    assert (r.status_code, r.headers["location"]) == (303, "/ui/models/alice")
    assert c.get("/ui/models/alice").status_code == 200
    other = c.get("/ui/models/bob")
    assert other.status_code == 403 and "model &#x27;bob&#x27;" in other.text
    assert other.headers["content-security-policy"] == CSP
    for path in ("/ui/api/models/bob", "/ui/api/models/bob/logs", "/ui/api/overview"):
        assert c.get(path).status_code == 403, path
    assert c.post("/ui/api/models/bob/stop", headers={CSRF_HEADER: csrf}).status_code == 403
    assert c.get("/ui/api/models/nobody").status_code == 404
    own = c.get("/ui/api/models/alice").json()
    assert own["status"]["name"] == "alice" and own["status"]["served_model_name"] == "qwen-coder"
    assert own["student"] == "alice" and own["needs_api_key"] is False
    assert STUDENT_TOKENS["alice"] not in c.get("/ui/api/models/alice").text


def test_usage_comes_from_the_engine_and_the_log_tail_is_incremental(host: Daemon) -> None:
    c, _ = logged_in(host, STUDENT_TOKENS["alice"])
    before = c.get("/ui/api/models/alice").json()["stats"]
    send_traffic(host, "alice", requests=3)
    time.sleep(1.6)  # the model page's readings may be 1.5 s old
    after = c.get("/ui/api/models/alice").json()["stats"]
    assert after["requests"] == before["requests"] + 3
    assert after["generation_tokens"] == before["generation_tokens"] + 3 * 24
    assert after["window_s"] is not None and after["generation_tps"] > 0
    assert after["ttft_p50_s"] is not None and after["ttft_scope"] == "recent"
    assert 0 < after["hit_rate"] < 1
    first = c.get("/ui/api/models/alice/logs").json()
    assert first["lines"] and first["next"] >= len(first["lines"])
    quiet = c.get(f"/ui/api/models/alice/logs?after={first['next']}").json()
    send_traffic(host, "alice", requests=1)
    wait_until(
        lambda: any(
            "POST /v1/completions" in line
            for line in c.get(f"/ui/api/models/alice/logs?after={first['next']}").json()["lines"]
        ),
        10,
        "the new request in the log's new lines",
    )
    assert len(quiet["lines"]) < len(first["lines"])


def test_overview_reports_slices_models_and_utilisation_history(host: Daemon) -> None:
    c, _ = logged_in(host, ADMIN_TOKEN)
    d = c.get("/ui/api/overview").json()
    assert [m["name"] for m in d["models"]] == ["alice", "bob", "carol", "dave"]
    assert d["stats"]["carol"] is None  # not serving: never scraped
    mig, whole = d["gpus"]
    assert mig["mig"] and mig["sm_util_pct"] is None
    assert not whole["mig"] and whole["sm_util_pct"] == 37
    assert {s["profile"]: s["models"] for s in mig["slices"][:2]} == {
        "3g.40gb": ["alice"],
        "2g.20gb": ["bob"],
    }
    assert whole["slices"][0]["models"] == ["dave"]
    ticks = d["history"]
    assert ticks and all(t["gpus"]["0"]["sm_util_pct"] is None for t in ticks)
    newer = c.get(f"/ui/api/overview?since={ticks[-1]['at']}").json()["history"]
    assert all(t["at"] > ticks[-1]["at"] for t in newer)


def test_a_reload_that_changes_a_students_token_ends_their_sessions(host: Daemon) -> None:
    c, _ = logged_in(host, STUDENT_TOKENS["bob"])
    assert c.get("/ui/api/models/bob").status_code == 200
    write_secret(host.root / "bob.token", "a-new-token-for-bob\n")
    try:
        assert host.post("/api/v1/reload").status_code == 200
        assert c.get("/ui/api/models/bob").status_code == 401
        fresh, _ = logged_in(host, "a-new-token-for-bob")
        assert fresh.get("/ui/api/models/bob").status_code == 200
    finally:
        write_secret(host.root / "bob.token", STUDENT_TOKENS["bob"] + "\n")
        assert host.post("/api/v1/reload").status_code == 200


def test_with_no_token_configured_the_page_opens_as_admin(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    d = Daemon(tmp_path, {"solo": {"model": "stand-in", "port": port, "host": "127.0.0.1"}})
    d.start(wait_ready=["solo"])
    try:
        c = client(d)
        assert c.get("/ui").status_code == 200  # loopback-only and open: no log-in page
        assert c.get("/ui/api/overview").status_code == 401  # the page asks for a session first
        s = c.get("/ui/api/session")
        assert s.json() == {"role": "admin", "model": None, "csrf": s.json()["csrf"], "auth": False}
        assert "httponly" in s.headers["set-cookie"].lower()
        assert [m["name"] for m in c.get("/ui/api/overview").json()["models"]] == ["solo"]
        assert c.post("/ui/api/models/solo/stop").status_code == 403  # still needs the CSRF token
    finally:
        d.terminate()
        for pid in marked_pids(d.root):
            os.kill(pid, signal.SIGKILL)
