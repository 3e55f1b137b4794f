"""The gateway process: `python -m orchestrator.gateway --listen HOST:PORT --control URL`.

The daemon starts it as its own process (its crash touches no engine), passing the control
plane's address; the gateway reads the engines' states from there. `--routes FILE` runs it
without a daemon, in front of fixed OpenAI-compatible servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from orchestrator.gateway.admission import Admission, OpenAdmission
from orchestrator.gateway.app import Gateway, Limits
from orchestrator.gateway.head_deadline import protocol_class
from orchestrator.gateway.proxy import Forwarder
from orchestrator.gateway.routes import RouteSource, table_from_file

if TYPE_CHECKING:
    from orchestrator.gateway.tracing import Tracing

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    control_url: str | None
    token_file: Path | None
    routes_file: Path | None
    refresh_s: float
    limits: Limits
    connect_timeout_s: float
    keys_config: Path | None = None
    otlp_endpoint: str | None = None


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m orchestrator.gateway", description=__doc__)
    p.add_argument("--listen", required=True, help="HOST:PORT (port 0: any free port)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--control", help="the daemon's control plane URL")
    source.add_argument("--routes", type=Path, help='JSON: [{"model": NAME, "url": URL}, ...]')
    p.add_argument("--token-file", type=Path, help="the control plane's admin token")
    p.add_argument("--refresh-s", type=float, default=1.0, help="engine states poll interval")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S)
    p.add_argument("--connect-timeout-s", type=float, default=5.0)
    p.add_argument(
        "--keys-config", type=Path, help="models.toml: require API keys from its state_dir"
    )
    p.add_argument("--otlp-endpoint", help="OTLP/HTTP traces URL: a span per request, sent there")
    a = p.parse_args(argv)
    host, sep, port = a.listen.rpartition(":")
    if not sep or not port.isdigit():
        p.error(f"--listen must be HOST:PORT, got {a.listen!r}")
    return Options(
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        control_url=a.control,
        token_file=a.token_file,
        routes_file=a.routes,
        refresh_s=a.refresh_s,
        limits=Limits(max_body_bytes=a.max_body_bytes, body_timeout_s=a.body_timeout_s),
        connect_timeout_s=a.connect_timeout_s,
        keys_config=a.keys_config,
        otlp_endpoint=a.otlp_endpoint,
    )


async def build_admission(options: Options) -> Admission:
    """The admission this gateway asks: by API key with limits and usage, or open to all."""
    if options.keys_config is None:
        return OpenAdmission()
    from orchestrator.accounting.admission import KeyedAdmission  # only where keys are on

    return KeyedAdmission.for_config(options.keys_config)


def build_tracing(options: Options) -> Tracing | None:
    """Spans to the OTLP endpoint, or None: then no OpenTelemetry code is even imported."""
    if options.otlp_endpoint is None:
        return None
    try:
        from orchestrator.gateway.tracing import Tracing
    except ImportError as e:
        raise SystemExit(
            f"--otlp-endpoint needs OpenTelemetry: pip install 'mig-orchestrator[otel]' ({e})"
        ) from None
    return Tracing(options.otlp_endpoint)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(False)
    return sock


def _raise_fd_limit() -> None:
    """Each open stream holds two descriptors (client and engine): use all the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def _task(coro: Coroutine[Any, Any, None]) -> Iterator[None]:
    task = asyncio.get_running_loop().create_task(coro)
    try:
        yield
    finally:
        task.cancel()


def build_server(app: Gateway) -> uvicorn.Server:
    """uvicorn on httptools, serving sockets the caller binds (so it knows the port at once)."""
    return uvicorn.Server(
        uvicorn.Config(
            app,
            # A request's head gets as long as its body (body_timeout_s) to arrive.
            http=protocol_class(app.limits.body_timeout_s),
            lifespan="off",
            access_log=False,
            log_level="warning",
            # The engine's own Server and Date headers pass through unchanged.
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=5,
        )
    )


async def serve(options: Options) -> None:
    sock = bind(options.host, options.port)
    routes = (
        RouteSource(table_from_file(options.routes_file)) if options.routes_file else RouteSource()
    )
    forwarder = Forwarder(options.connect_timeout_s)
    session = await forwarder.start()
    admission = await build_admission(options)
    tracing = build_tracing(options)
    server = build_server(Gateway(routes, admission, forwarder, options.limits, tracing))
    bound = sock.getsockname()
    print(json.dumps({"url": f"http://{options.host}:{bound[1]}"}), flush=True)
    try:
        if options.control_url:
            follow = routes.follow(
                session, options.control_url, options.token_file, options.refresh_s
            )
            with _task(follow):
                await server.serve(sockets=[sock])
        else:
            await server.serve(sockets=[sock])
    finally:
        await admission.close()
        await forwarder.close()
        if tracing is not None:
            await asyncio.to_thread(tracing.close)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # not on every platform; asyncio's own loop works, slower
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _raise_fd_limit()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
