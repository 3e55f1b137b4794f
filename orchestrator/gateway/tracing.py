"""OpenTelemetry spans for the gateway's requests, when [gateway] otlp_endpoint is set.

Attributes follow the OpenTelemetry GenAI semantic conventions 1.37 (`gen_ai.*`, with
`gen_ai.provider.name`), plus the names vLLM 0.32's own `llm_request` span uses where they
differ (vllm/tracing/utils.py, `SpanAttributes`: `gen_ai.usage.prompt_tokens`,
`gen_ai.latency.time_to_first_token`, ...), so that one query finds both spans. The W3C
`traceparent` of the gateway's span goes on to the engine, whose span then joins the trace.

Without an endpoint nothing here is imported and the gateway never calls it: the package is the
optional `[otel]` extra.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.gateway.admission import Outcome

SEMCONV_VERSION = "1.37.0"
SERVICE_NAME = "mig-orchestrator-gateway"
# gen_ai.operation.name per route (GenAI semconv's well-known values).
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}
# Request parameters copied onto the span: body field -> attribute.
_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
}
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
_PROPAGATOR = TraceContextTextMapPropagator()


class RequestSpan:
    """One request's span: opened when the body is parsed, ended with the request's outcome."""

    def __init__(self, span: trace.Span, started_ns: int) -> None:
        self._span = span
        self._started_ns = started_ns
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        self.headers = carrier  # traceparent (and tracestate) for the engine
        self.trace_id = format(span.get_span_context().trace_id, "032x")

    def end(self, outcome: Outcome, served_name: str | None) -> None:
        span, attrs = self._span, _outcome_attributes(outcome, served_name)
        span.set_attributes(attrs)
        if outcome.status >= 400 or outcome.error:
            span.set_status(Status(StatusCode.ERROR, outcome.error or str(outcome.status)))
            span.set_attribute("error.type", str(outcome.status))
        span.end(self._started_ns + int(outcome.duration_s * 1e9))


class Tracing:
    """The gateway's tracer provider, exporting in batches off the event loop."""

    def __init__(self, endpoint: str, provider: TracerProvider | None = None) -> None:
        if provider is None:
            provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self.provider = provider
        self._tracer = provider.get_tracer("orchestrator.gateway", schema_url=_schema_url())

    def start(
        self, route: str, body: Mapping[str, Any], headers: Iterable[tuple[bytes, bytes]]
    ) -> RequestSpan:
        """A span for a request to `route`; a client's own traceparent becomes its parent."""
        operation = OPERATIONS.get(route, route)
        model = body.get("model")
        incoming = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in _TRACE_HEADERS
        }
        parent = _PROPAGATOR.extract(incoming) if incoming else None
        now_ns = time.time_ns()
        span = self._tracer.start_span(
            f"{operation} {model}",
            context=parent,
            kind=SpanKind.CLIENT,
            start_time=now_ns,
            attributes=_request_attributes(operation, route, body),
        )
        return RequestSpan(span, now_ns)

    def close(self) -> None:
        """Send what is batched, then stop the exporter."""
        self.provider.shutdown()


def _schema_url() -> str:
    return f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"


def _request_attributes(operation: str, route: str, body: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "vllm",
        "gen_ai.system": "vllm",  # the name before semconv 1.37, which many backends still read
        "http.route": route,
    }
    if isinstance(model := body.get("model"), str):
        attrs["gen_ai.request.model"] = model
    for field, name in _PARAMS.items():
        value = body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[name] = value
    if body.get("stream") is True:
        attrs["gen_ai.request.stream"] = True
    return attrs


def _outcome_attributes(outcome: Outcome, served_name: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "http.response.status_code": outcome.status,
        "gen_ai.latency.e2e": outcome.duration_s,  # vLLM's name
        # vLLM's gen_ai.request.id: the X-Request-Id the engine got.
        "gen_ai.request.id": outcome.request_id,
    }
    if served_name:
        attrs["gen_ai.response.model"] = served_name
    if outcome.prompt_tokens is not None:
        attrs["gen_ai.usage.input_tokens"] = outcome.prompt_tokens
        attrs["gen_ai.usage.prompt_tokens"] = outcome.prompt_tokens  # vLLM's name
    if outcome.completion_tokens is not None:
        attrs["gen_ai.usage.output_tokens"] = outcome.completion_tokens
        attrs["gen_ai.usage.completion_tokens"] = outcome.completion_tokens  # vLLM's name
    if outcome.ttft_s is not None:
        attrs["gen_ai.latency.time_to_first_token"] = outcome.ttft_s  # vLLM's name
    if outcome.client:
        host, _, port = outcome.client.rpartition(":")
        attrs["client.address"] = host
        if port.isdigit():
            attrs["client.port"] = int(port)
    return attrs
