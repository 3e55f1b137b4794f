"""The gateway process in front of the null server and a paced upstream: streaming as it comes,
bad input answered in OpenAI's shape, and the admission seam."""

from __future__ import annotations

import asyncio
import itertools
import socket
import statistics
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.gateway import errors
from orchestrator.gateway.admission import ANONYMOUS, Caller, Grant, Outcome
from orchestrator.gateway.app import Gateway, Limits
from orchestrator.gateway.proxy import Forwarder
from orchestrator.gateway.routes import Route, RouteSource, RouteTable
from orchestrator.gateway.server import bind, build_server
from tests.gateway_support import PacedUpstream, gateway, null_server

COMPLETION = {"model": "null", "prompt": "one two three", "max_tokens": 8}


def _event_times(url: str, body: dict[str, Any]) -> list[float]:
    """When each SSE event of a streamed answer reached the client."""
    times: list[float] = []
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{url}/v1/completions", json=body) as r,
    ):
        assert r.status_code == 200
        for chunk in r.iter_raw():
            times += [time.monotonic()] * chunk.count(b"data: ")
    return times


def test_streams_at_the_engine_pace_not_buffered(tmp_path: Path) -> None:
    """The null server sends a token every 100 ms: through the gateway the gaps are the same."""
    body = {**COMPLETION, "stream": True, "max_tokens": 8}
    with (
        null_server(tmp_path, "--token-delay", "0.1") as direct,
        gateway(tmp_path, [{"model": "null", "url": direct}]) as (_, via),
    ):
        for _ in range(2):  # A B A B
            gaps = {}
            for name, url in (("direct", direct), ("gateway", via)):
                times = _event_times(url, body)
                assert len(times) == 8 + 2  # tokens, usage, [DONE]
                gaps[name] = [b - a for a, b in itertools.pairwise(times[:8])]
            for name, g in gaps.items():
                # Each token arrives on its own, about 100 ms after the one before.
                assert min(g) > 0.07, (name, g)
            assert (
                abs(statistics.median(gaps["gateway"]) - statistics.median(gaps["direct"])) < 0.02
            )


def test_models_health_and_errors_in_openai_shape(tmp_path: Path) -> None:
    routes = [
        {"model": "null", "url": "http://127.0.0.1:9"},
        {"model": "warming", "url": "http://127.0.0.1:9", "state": "starting"},
    ]
    with null_server(tmp_path) as direct:
        routes[0]["url"] = direct
        with (
            gateway(tmp_path, routes, "--max-body-bytes", "2000") as (_, url),
            httpx.Client(base_url=url, timeout=10) as c,
        ):
            assert c.get("/health").status_code == 200
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["null", "warming"]
            ok = c.post("/v1/completions", json=COMPLETION)
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 8
            assert ok.headers["x-request-id"]

            def error(r: httpx.Response, status: int, code: str) -> str:
                assert r.status_code == status, r.text
                e = r.json()["error"]
                assert e["code"] == code and e["type"] and "param" in e
                return str(e["message"])

            error(c.post("/v1/completions", content=b"{not json"), 400, "invalid_body")
            error(c.post("/v1/completions", json=[1, 2]), 400, "invalid_body")
            error(c.post("/v1/completions", json={"prompt": "x"}), 400, "invalid_body")
            msg = error(
                c.post("/v1/completions", json={**COMPLETION, "model": "x"}), 404, "model_not_found"
            )
            assert "`x`" in msg
            big = {**COMPLETION, "prompt": "w " * 2000}
            error(c.post("/v1/completions", json=big), 413, "request_too_large")
            r = c.post("/v1/chat/completions", json={**COMPLETION, "model": "warming"})
            assert "starting" in error(r, 503, "model_not_ready")
            assert r.headers["retry-after"]
            error(c.get("/v1/engines"), 404, "unknown_url")
            error(c.post("/load_lora_adapter", json={"model": "null"}), 404, "unknown_url")
            # The gateway still serves after every refusal.
            assert c.post("/v1/completions", json=COMPLETION).status_code == 200


def test_unreachable_engine_is_a_503(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with (
        gateway(tmp_path, [{"model": "null", "url": dead}]) as (_, url),
        httpx.Client(base_url=url, timeout=10) as c,
    ):
        r = c.post("/v1/completions", json=COMPLETION)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unreachable"


def test_slow_body_is_refused_and_slow_reader_gets_everything(tmp_path: Path) -> None:
    with (
        null_server(tmp_path) as direct,
        gateway(tmp_path, [{"model": "null", "url": direct}], "--body-timeout-s", "1") as (_, url),
    ):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
            answer = b""
            while chunk := s.recv(65536):  # the gateway closes after answering
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
        # Silent and trickling heads are closed after the same deadline.
        for sent in (b"", b"POST /v1/completions HTTP/1.1\r\nhost"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(sent)
                started = time.monotonic()
                assert s.recv(100) == b""  # closed by the gateway, no answer
                assert 0.5 < time.monotonic() - started < 4
        # A client that reads slowly still gets the whole stream.
        body = {**COMPLETION, "stream": True, "max_tokens": 3000}
        got = b""
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{url}/v1/completions", json=body) as r,
        ):
            for chunk in r.iter_raw(4096):
                got += chunk
                time.sleep(0.002)
        assert got.count(b"data: ") == 3000 + 2 and got.endswith(b"data: [DONE]\n\n")


@dataclass
class RecordingAdmission:
    """An admission like the one keys and limits bring: asks for usage, caps max_tokens,
    hides one model, replaces the client's key toward the engine."""

    outcomes: list[Outcome] = field(default_factory=list)
    closed: bool = False

    async def admit(self, api_key: str | None, model: str | None, body: Mapping[str, Any]) -> Grant:
        if api_key != "k1":
            raise errors.ApiError(
                401, "bad key", type="authentication_error", code="invalid_api_key"
            )
        if model == "hidden":
            raise errors.model_not_found(model)
        return _Grant(self)

    async def close(self) -> None:
        self.closed = True


@dataclass
class _Grant:
    admission: RecordingAdmission
    caller: Caller = ANONYMOUS
    body_changes: Mapping[str, Any] = field(default_factory=lambda: {"max_tokens": 4})
    upstream_headers: Mapping[str, str] = field(
        default_factory=lambda: {"Authorization": "Bearer engine-key"}
    )
    wants_usage: bool = True

    def allowed(self, model: str) -> bool:
        return model != "hidden"

    async def finish(self, outcome: Outcome) -> None:
        self.admission.outcomes.append(outcome)


@pytest.fixture
async def seam() -> AsyncIterator[tuple[str, PacedUpstream, RecordingAdmission]]:
    async with PacedUpstream(tokens=6, delay_s=0.02) as up:
        table = RouteTable({n: Route(n, n, up.url, "ready") for n in ("paced", "hidden")})
        admission = RecordingAdmission()
        forwarder = Forwarder(connect_timeout_s=5)
        await forwarder.start()
        sock = bind("127.0.0.1", 0)
        app = Gateway(RouteSource(table), admission, forwarder, Limits(10_000, 5))
        server = build_server(app)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}", up, admission
        finally:
            server.should_exit = True
            await task
            await forwarder.close()


async def test_admission_seam_usage_strip_and_finish(
    seam: tuple[str, PacedUpstream, RecordingAdmission],
) -> None:
    url, up, admission = seam
    key = {"Authorization": "Bearer k1"}
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.get("/v1/models", headers=key)
        assert [m["id"] for m in r.json()["data"]] == ["paced"]
        r = await c.post("/v1/completions", json={"model": "paced", "prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await c.post("/v1/completions", json={"model": "hidden", "prompt": "x"}, headers=key)
        assert r.status_code == 404
        body = {"model": "paced", "prompt": "x", "stream": True, "max_tokens": 99}
        r = await c.post("/v1/completions", json=body, headers=key)
        # The client did not ask for usage: the gateway asked the engine and took it out again.
        assert b'"usage"' not in r.content and r.content.endswith(b"data: [DONE]\n\n")
        assert r.content.count(b"data: ") == 6 + 1
        sent = up.bodies[-1]
        assert sent["stream_options"] == {"include_usage": True} and sent["max_tokens"] == 4
        assert up.headers[-1]["authorization"] == "Bearer engine-key"
        assert up.headers[-1]["x-request-id"] == r.headers["x-request-id"]
        asked = {**body, "stream_options": {"include_usage": True}}
        r = await c.post("/v1/completions", json=asked, headers=key)
        assert b'"usage"' in r.content  # asked for: passed on
    stream = [o for o in admission.outcomes if o.route == "/v1/completions" and o.status == 200]
    assert len(stream) == 2
    for o in stream:
        assert (o.prompt_tokens, o.completion_tokens, o.streamed, o.error) == (3, 6, True, None)
        assert o.ttft_s is not None and 0 < o.ttft_s < o.duration_s
    listing = [o for o in admission.outcomes if o.route == "/v1/models"]
    assert len(listing) == 1 and listing[0].model is None


async def test_client_disconnect_closes_the_engine_connection(
    seam: tuple[str, PacedUpstream, RecordingAdmission],
) -> None:
    url, up, admission = seam
    up.tokens, up.delay_s = 1000, 0.05
    body = {"model": "paced", "prompt": "x", "stream": True}
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as c,
        c.stream("POST", "/v1/completions", json=body, headers={"Authorization": "Bearer k1"}) as r,
    ):
        async for _ in r.aiter_raw():
            break
        left = time.monotonic()
    for _ in range(100):  # the engine side sees its connection close
        if up.closed:
            break
        await asyncio.sleep(0.02)
    assert up.closed and up.closed[0] - left < 1.0
    for _ in range(50):
        if admission.outcomes:
            break
        await asyncio.sleep(0.02)
    (o,) = admission.outcomes
    assert o.error == "client disconnected" and o.streamed
