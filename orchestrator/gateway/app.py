"""The gateway's ASGI application: one OpenAI endpoint for every engine, routed by `model`.

Raw ASGI rather than a framework: a request costs one body read, one json.loads and one dict
lookup before it is forwarded, and an answer's pieces go straight to uvicorn's transport.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from orchestrator.gateway import errors
from orchestrator.gateway.admission import Admission, Grant, Outcome
from orchestrator.gateway.proxy import Exchange, Forwarder, upstream_headers
from orchestrator.gateway.routes import RouteSource

if TYPE_CHECKING:  # the [otel] extra, imported only where an OTLP endpoint is set
    from orchestrator.gateway.tracing import RequestSpan, Tracing

# What the gateway routes by the body's `model`; nothing else of an engine's API (its admin
# routes, LoRA loading, /metrics) is reachable through it.
ROUTED = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_JSON = [(b"content-type", b"application/json")]
# The status an answer that never started gets when its client left (nginx's convention).
CLIENT_CLOSED = 499
# Refused before the whole body was read: what is left of it must not be taken for a request.
_CLOSE_AFTER = frozenset({408, 413})


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int  # a larger request body is refused with 413
    body_timeout_s: float  # the whole body must arrive within this


@dataclass(frozen=True)
class _Request:
    api_key: str | None
    request_id: str
    length: int | None  # Content-Length, when sent
    client: str | None


def _read_head(scope: Scope) -> _Request:
    key = request_id = length = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        elif name == b"x-request-id":
            request_id = value.decode("latin-1")[:200]
        elif name == b"content-length":
            length = int(value) if value.isdigit() else -1
    client = scope.get("client")
    return _Request(
        key, request_id or uuid.uuid4().hex, length, f"{client[0]}:{client[1]}" if client else None
    )


class Gateway:
    def __init__(
        self,
        routes: RouteSource,
        admission: Admission,
        forwarder: Forwarder,
        limits: Limits,
        tracing: Tracing | None = None,
    ) -> None:
        self.routes = routes
        self.admission = admission
        self.forwarder = forwarder
        self.limits = limits
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path in ROUTED and method == "POST":
                await self._generate(scope, receive, send)
            elif path == "/v1/models" and method == "GET":
                await self._models(scope, send)
            elif path == "/health" and method == "GET":
                await _respond(send, 200, b"{}")
            else:
                raise errors.no_route(method, path)
        except errors.ApiError as exc:
            await _error(send, exc)

    async def _models(self, scope: Scope, send: Send) -> None:
        head = _read_head(scope)
        started = time.perf_counter()
        grant = await self.admission.admit(head.api_key, None, {})
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "mig-orchestrator"}
            for name in sorted(self.routes.table.routes)
            if grant.allowed(name)
        ]
        await _respond(send, 200, json.dumps({"object": "list", "data": data}).encode())
        await grant.finish(_outcome(head, "/v1/models", None, 200, started))

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = _read_head(scope)
        started = time.perf_counter()
        raw = await self._read_body(receive, head.length)
        body = _parse(raw)
        model: str = body["model"]
        grant = await self.admission.admit(head.api_key, model, body)
        span = self.tracing.start(scope["path"], body, scope["headers"]) if self.tracing else None
        trace_id = span.trace_id if span is not None else None
        served = None
        try:
            ex = self._exchange(scope, head, grant, body, raw, started, span)
            served = ex.route.served_name
            await self.forwarder.forward(ex, receive, send)
            outcome = _done(ex, head, model, trace_id)
        except errors.ApiError as exc:
            await _error(send, exc)
            outcome = _outcome(
                head, scope["path"], model, exc.status, started, exc.message, trace_id
            )
        except BaseException as exc:
            outcome = _outcome(head, scope["path"], model, 500, started, repr(exc), trace_id)
            _end(span, outcome, served)
            await asyncio.shield(grant.finish(outcome))
            raise
        _end(span, outcome, served)
        await grant.finish(outcome)

    def _exchange(
        self,
        scope: Scope,
        head: _Request,
        grant: Grant,
        body: dict[str, Any],
        raw: bytes,
        started: float,
        span: RequestSpan | None,
    ) -> Exchange:
        model = body["model"]
        route = self.routes.table.get(model)
        if route is None:
            raise errors.model_not_found(model)
        if not route.ready:
            raise errors.not_ready(model, route.state, route.reason)
        strip = False
        # A traced request's span carries its token counts, also where nothing else counts them.
        wants_usage = grant.wants_usage or span is not None
        if grant.body_changes:
            body.update(grant.body_changes)
        if wants_usage and body.get("stream") is True:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                body["stream_options"] = {**(options or {}), "include_usage": True}
                strip = True
        if grant.body_changes or strip:
            raw = json.dumps(body).encode()
        return Exchange(
            route=route,
            path=scope["path"],
            body=raw,
            headers=upstream_headers(scope["headers"], head.request_id, _replace(grant, span)),
            request_id=head.request_id,
            usage=wants_usage,
            strip_usage=strip,
            started=started,
        )

    async def _read_body(self, receive: Receive, length: int | None) -> bytes:
        limit = self.limits.max_body_bytes
        if length is not None and (length < 0 or length > limit):
            raise (
                errors.too_large(limit) if length > limit else errors.bad_body("bad Content-Length")
            )
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise errors.bad_body("the client closed the connection mid-body")
                    part = message.get("body", b"")
                    size += len(part)
                    if size > limit:
                        raise errors.too_large(limit)
                    parts.append(part)
                    if not message.get("more_body", False):
                        return parts[0] if len(parts) == 1 else b"".join(parts)
        except TimeoutError:
            raise errors.too_slow(self.limits.body_timeout_s) from None


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_body(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise errors.bad_body("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.bad_body("The request body needs `model`: a model's name.", param="model")
    return body


def _outcome(
    head: _Request,
    route: str,
    model: str | None,
    status: int,
    started: float,
    error: str | None = None,
    trace_id: str | None = None,
) -> Outcome:
    return Outcome(
        status=status,
        prompt_tokens=None,
        completion_tokens=None,
        ttft_s=None,
        duration_s=time.perf_counter() - started,
        error=error,
        streamed=False,
        client=head.client,
        request_id=head.request_id,
        route=route,
        model=model,
        trace_id=trace_id,
    )


def _done(ex: Exchange, head: _Request, model: str, trace_id: str | None) -> Outcome:
    tokens = ex.tokens
    error = ex.error or (f"the engine answered {ex.status}" if ex.status >= 400 else None)
    return Outcome(
        status=ex.status or CLIENT_CLOSED,
        prompt_tokens=tokens.prompt_tokens if tokens else None,
        completion_tokens=tokens.completion_tokens if tokens else None,
        ttft_s=ex.ttft_s,
        duration_s=time.perf_counter() - ex.started,
        error=error,
        streamed=ex.streamed,
        client=head.client,
        request_id=ex.request_id,
        route=ex.path,
        model=model,
        trace_id=trace_id,
    )


def _replace(grant: Grant, span: RequestSpan | None) -> Mapping[str, str]:
    """Headers set on the way to the engine: the admission's, and the span's traceparent in
    place of the client's."""
    if span is None:
        return grant.upstream_headers
    return {**grant.upstream_headers, **span.headers}


def _end(span: RequestSpan | None, outcome: Outcome, served: str | None) -> None:
    if span is not None:
        span.end(outcome, served)


async def _respond(send: Send, status: int, body: bytes, extra: Any = ()) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, exc: errors.ApiError) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    if exc.status in _CLOSE_AFTER:
        extra.append((b"connection", b"close"))
    await _respond(send, exc.status, exc.body(), extra)
