"""The control-plane commands (status, start/stop/restart, logs, reload) against a recording
stand-in for the daemon's REST API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from orchestrator.cli.main import main

TOKEN = "admin-secret"
STATUS: dict[str, Any] = {
    "name": "alice",
    "state": "ready",
    "pid": 4242,
    "port": 8001,
    "slice": {"gpu_index": 0, "profile": "3g.40gb"},
    "uptime_s": 61.4,
    "restarts": 2,
    "reason": None,
    "endpoint": "http://127.0.0.1:8001/v1",
    "served_model_name": "coder",
    "last_exit": None,
}


class Api:
    """Answers like the control plane and records (method, path, body, authorization)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, str | None]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.calls.append((method, self.path, body, self.headers.get("Authorization")))
                code, doc = api.route(method, self.path)
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, method: str, path: str) -> tuple[int, Any]:
        if path == "/api/v1/models":
            return 200, [STATUS]
        if path == "/api/v1/models/alice":
            return 200, STATUS
        if path.startswith("/api/v1/models/alice/logs"):
            return 200, {"model": "alice", "lines": ["one", "two"]}
        if method == "POST" and path.startswith("/api/v1/models/alice/"):
            return 202, {**STATUS, "state": "stopping"}
        if path == "/api/v1/reload":
            return 200, {"added": ["bob"], "removed": [], "changed": ["alice"], "unchanged": []}
        return 404, {"error": f"no model named {path.split('/')[4]!r}"}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    a = Api()
    thread = threading.Thread(target=a.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("MIG_ORCH_URL", a.url)
    monkeypatch.setenv("MIG_ORCH_TOKEN", TOKEN)
    monkeypatch.delenv("MIG_ORCH_TOKEN_FILE", raising=False)
    yield a
    a.server.shutdown()
    a.server.server_close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_status_prints_one_row_per_model_with_the_token(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(capsys, "status")
    assert rc == 0
    header, row = out.splitlines()
    assert header.split() == [
        "MODEL",
        "STATE",
        "PID",
        "PORT",
        "SLICE",
        "UPTIME",
        "RESTARTS",
        "STANDBY",
        "REASON",
    ]
    assert row.split() == ["alice", "ready", "4242", "8001", "GPU0", "3g.40gb", "61s", "2", "-"]
    assert api.calls == [("GET", "/api/v1/models", None, f"Bearer {TOKEN}")]


def test_status_of_one_model_adds_its_endpoint(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(capsys, "status", "alice")
    assert rc == 0
    assert "endpoint: http://127.0.0.1:8001/v1  (model name: coder)" in out


def test_restart_sends_the_overrides_it_was_given(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(
        capsys, "restart", "alice", "--set", "enable_prefix_caching=false", "--set", "dtype=half"
    )
    assert rc == 0 and out.strip() == "alice: stopping"
    body = {"overrides": {"enable_prefix_caching": False, "dtype": "half"}}
    assert api.calls[-1][:3] == ("POST", "/api/v1/models/alice/restart", body)


def test_clear_overrides_sends_an_empty_table(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "restart", "alice", "--clear-overrides")[0] == 0
    assert api.calls[-1][2] == {"overrides": {}}


@pytest.mark.parametrize("verb", ["start", "stop"])
def test_start_and_stop_send_no_body(
    api: Api, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    rc, out, _ = run(capsys, verb, "alice", "--json")
    assert rc == 0 and json.loads(out)["state"] == "stopping"
    assert api.calls[-1][:3] == ("POST", f"/api/v1/models/alice/{verb}", None)


def test_logs_and_reload(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "logs", "alice", "-n", "2")[1] == "one\ntwo\n"
    assert api.calls[-1][1] == "/api/v1/models/alice/logs?tail=2"
    assert run(capsys, "reload")[1] == "added: bob  removed: -  changed: alice  unchanged: -\n"


def test_the_daemons_error_is_printed_and_exits_1(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(capsys, "stop", "nobody")
    assert rc == 1
    assert err.strip() == "error: POST /api/v1/models/nobody/stop: 404: no model named 'nobody'"


def test_a_bad_set_item_is_refused_before_any_call(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(capsys, "restart", "alice", "--set", "no-equals-sign")
    assert rc == 1 and "--set takes KEY=VALUE" in err
    assert api.calls == []
