"""The uvicorn internals http_server.py builds on: a release that moves them fails here first."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from uvicorn.protocols.http.h11_impl import H11Protocol

from orchestrator.http.http_server import _BoundedH11


def test_the_pinned_release_is_the_one_installed() -> None:
    assert version("uvicorn").startswith("0.55.")


def test_h11_protocol_still_has_what_the_subclass_uses() -> None:
    source = inspect.getsource(H11Protocol)
    for name in (
        "self.cycle",
        "self.connections",
        "def connection_made",
        "def on_response_complete",
        "def connection_lost",
    ):
        assert name in source, name
    assert issubclass(_BoundedH11, H11Protocol)


def test_httptools_protocol_still_has_what_the_gateway_uses() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from orchestrator.gateway.head_deadline import protocol_class

    source = inspect.getsource(HttpToolsProtocol)
    for name in (
        "self.loop",
        "self.transport",
        "def connection_made",
        "def on_message_begin",
        "def on_headers_complete",
        "def connection_lost",
    ):
        assert name in source, name
    assert issubclass(protocol_class(1.0), HttpToolsProtocol)
