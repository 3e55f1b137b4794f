"""Open mode (no tokens, loopback listen): a web page can neither rebind to nor write to it."""

from __future__ import annotations

import httpx
import pytest

from tests.daemon_harness import Daemon, free_ports
from tests.daemon_harness import standin_model as model

pytestmark = pytest.mark.slow


@pytest.fixture
def open_daemon(daemons) -> Daemon:
    (port,) = free_ports(1)
    return daemons({"alice": model(port, profile="3g.40gb")}).start(wait_ready=["alice"])


def test_a_foreign_origin_cannot_stop_or_reload(open_daemon: Daemon) -> None:
    evil = {"Origin": "http://evil.example"}
    for path in ("/api/v1/models/alice/stop", "/api/v1/reload"):
        r = httpx.post(f"{open_daemon.url}{path}", headers=evil, timeout=10)
        assert r.status_code == 403, (path, r.text)
        assert "cross-site" in r.text
    assert open_daemon.status("alice")["state"] == "ready"


@pytest.mark.parametrize("origin", ["null", "http://localhost", "http://127.0.0.1:1"])
def test_an_origin_on_another_port_or_opaque_is_foreign(open_daemon: Daemon, origin: str) -> None:
    r = httpx.post(
        f"{open_daemon.url}/api/v1/models/alice/stop", headers={"Origin": origin}, timeout=10
    )
    assert r.status_code == 403


def test_a_rebound_host_gets_no_admin_session(open_daemon: Daemon) -> None:
    port = open_daemon.port
    for path in ("/ui/api/session", "/api/v1/models"):
        r = httpx.get(
            f"{open_daemon.url}{path}", headers={"Host": f"evil.example:{port}"}, timeout=10
        )
        assert r.status_code == 421, (path, r.text)
        assert "set-cookie" not in r.headers
    r = httpx.post(
        f"{open_daemon.url}/ui/api/session", headers={"Host": f"evil.example:{port}"}, timeout=10
    )
    assert r.status_code == 421


def test_the_cli_and_same_origin_pages_still_work(open_daemon: Daemon) -> None:
    url = open_daemon.url
    assert httpx.get(f"{url}/api/v1/models", timeout=10).status_code == 200
    same = {"Origin": f"http://127.0.0.1:{open_daemon.port}"}
    r = httpx.post(f"{url}/api/v1/models/alice/stop", headers=same, timeout=10)
    assert r.status_code == 202, r.text
    local = {"Host": f"localhost:{open_daemon.port}"}
    assert httpx.get(f"{url}/api/v1/models", headers=local, timeout=10).status_code == 200
