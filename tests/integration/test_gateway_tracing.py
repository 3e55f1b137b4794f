"""The gateway's spans: GenAI attributes (and vLLM's names), the traceparent sent on to the
engine, a client's own trace continued, and token counts on the span without keys."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator.gateway.admission import OpenAdmission
from orchestrator.gateway.tracing import Tracing
from tests.gateway_support import PacedUpstream, in_process

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
async def traced() -> AsyncIterator[tuple[str, PacedUpstream, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with PacedUpstream(tokens=4, delay_s=0.01) as up:
        tracing = Tracing("http://unused.invalid", provider)
        async with in_process(up.url, {"paced": "student-a"}, OpenAdmission(), tracing) as url:
            yield url, up, exporter


async def test_a_span_per_request_with_genai_and_vllm_attributes(
    traced: tuple[str, PacedUpstream, InMemorySpanExporter],
) -> None:
    url, up, exporter = traced
    body = {"model": "paced", "prompt": "x", "stream": True, "max_tokens": 9, "temperature": 0.5}
    parent = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.post("/v1/completions", json=body, headers={"traceparent": parent})
        assert r.status_code == 200 and b'"usage"' not in r.content  # asked for, taken out
        r2 = await c.post("/v1/completions", json={**body, "stream": False, "model": "nope"})
        assert r2.status_code == 404
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    span = spans[0]
    ctx = span.get_span_context()
    assert format(ctx.trace_id, "032x") == CLIENT_TRACE  # the client's trace, continued
    sent = up.headers[0]["traceparent"]
    assert sent == f"00-{CLIENT_TRACE}-{ctx.span_id:016x}-01"  # the engine's parent: our span
    a = span.attributes or {}
    assert span.name == "text_completion paced"
    assert a["gen_ai.operation.name"] == "text_completion"
    assert a["gen_ai.request.model"] == "paced" and a["gen_ai.response.model"] == "paced"
    assert a["gen_ai.request.max_tokens"] == 9 and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.input_tokens"] == a["gen_ai.usage.prompt_tokens"] == 3
    assert a["gen_ai.usage.output_tokens"] == a["gen_ai.usage.completion_tokens"] == 4
    assert a["gen_ai.request.id"] == r.headers["x-request-id"]
    assert 0 < a["gen_ai.latency.time_to_first_token"] < a["gen_ai.latency.e2e"]
    assert a["http.response.status_code"] == 200 and a["client.address"] == "127.0.0.1"
    failed = spans[1]
    assert failed.attributes and failed.attributes["http.response.status_code"] == 404
    assert failed.status.status_code.name == "ERROR"
