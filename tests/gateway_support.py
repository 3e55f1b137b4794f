"""Gateway tests' parts: the gateway and the null server as real processes, and a paced
vLLM-shaped upstream that records what reached it and when its connections closed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.gateway.admission import Admission
from orchestrator.gateway.app import Gateway, Limits
from orchestrator.gateway.proxy import Forwarder
from orchestrator.gateway.routes import Route, RouteSource, RouteTable
from orchestrator.gateway.server import bind, build_server

if TYPE_CHECKING:
    from orchestrator.gateway.tracing import Tracing

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def process(argv: list[str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A server process that prints {"url": ...} as its first line; stopped on exit."""
    err = open(log, "wb")  # noqa: SIM115 - the child writes it until it exits
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise AssertionError(f"{argv} exited {proc.returncode}:\n{log.read_text()}")
        yield proc, json.loads(line)["url"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()


@contextmanager
def null_server(tmp: Path, *args: str) -> Iterator[str]:
    argv = [sys.executable, "-m", "orchestrator.bench.nullserver", "--port", "0", *args]
    with process(argv, tmp / f"null-{time.monotonic_ns()}.log") as (_, url):
        yield url


@contextmanager
def gateway(
    tmp: Path, routes: list[dict[str, Any]], *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The gateway process in front of fixed routes ({"model", "url"[, "state"]})."""
    path = tmp / f"routes-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(routes))
    argv = [sys.executable, "-m", "orchestrator.gateway", "--listen", "127.0.0.1:0"]
    with process([*argv, "--routes", str(path), *args], tmp / "gateway.log") as running:
        yield running


@dataclass
class PacedUpstream:
    """Streams `tokens` SSE events `delay_s` apart, vLLM-shaped: the usage event only when the
    body asks for it (stream_options.include_usage). Records each request body and the moment
    each connection closed."""

    tokens: int = 10
    delay_s: float = 0.05
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> PacedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.append(time.monotonic())
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)
        }
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        self.bodies.append(body)
        self.headers.append(headers)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for i in range(self.tokens):
            event = {
                "id": "x",
                "object": "text_completion",
                "choices": [{"index": 0, "text": f" t{i}"}],
            }
            self._chunk(writer, _sse(event))
            await writer.drain()
            await asyncio.sleep(self.delay_s)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": 3,
                "completion_tokens": self.tokens,
                "total_tokens": 3 + self.tokens,
            }
            self._chunk(writer, _sse({"id": "x", "choices": [], "usage": usage}))
        self._chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


@asynccontextmanager
async def in_process(
    upstream: str, names: dict[str, str], admission: Admission, tracing: Tracing | None = None
) -> AsyncIterator[str]:
    """The gateway in this event loop in front of `upstream`, serving {served name: model};
    yields its URL."""
    table = RouteTable({s: Route(s, n, upstream, "ready") for s, n in names.items()})
    forwarder = Forwarder(connect_timeout_s=5)
    await forwarder.start()
    sock = bind("127.0.0.1", 0)
    app = Gateway(RouteSource(table), admission, forwarder, Limits(10_000, 5), tracing)
    server = build_server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        await forwarder.close()
