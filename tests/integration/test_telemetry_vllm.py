"""Telemetry against a real vLLM CPU engine behind the keyed gateway, with Arize Phoenix as the
OTLP receiver: the request log matches what the official SDK was told, request by request, and
the gateway's span and vLLM's `llm_request` span join in one trace with the right attributes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import KeyStore, Limits
from orchestrator.accounting.request_log import RequestFilter, read_log
from tests.daemon_harness import Daemon, cpu_vllm_daemon, free_ports, marked_pids, wait_until
from tests.otlp_receiver import Phoenix, phoenix
from tests.vllm_support import engine_venv, tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TIMEOUT = 600
SERVED = "tiny-chat"
PROMPT = "one two three four five"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, Phoenix]]:
    root = tmp_path_factory.mktemp("telemetry-vllm")
    with phoenix(root) as receiver:
        engine_port, gw_port = free_ports(2)
        d = cpu_vllm_daemon(
            root, engine_venv(), [("tiny", SERVED, engine_port, "3g.40gb", True, tiny_model())],
            orchestrator={"standby": False},
        )  # fmt: skip
        assert d.config_text is not None
        d.config_text = (
            d.config_text.replace(
                f'served_model_name = "{SERVED}"',
                f'served_model_name = "{SERVED}"\nstudent = "Alice"\n'
                f'otlp_traces_endpoint = "{receiver.traces_endpoint}"',
            ).replace("env = { ", 'env = { OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = "http/protobuf", ')
            + f'\n[gateway]\nenabled = true\nlisten = "127.0.0.1:{gw_port}"\nrefresh_s = 0.2\n'
            f'keys = true\notlp_endpoint = "{receiver.traces_endpoint}"\n'
        )
        d.write_config()
        try:
            d.start(timeout=120)
            d.wait_state("tiny", "ready", timeout=TIMEOUT)
            yield d, f"http://127.0.0.1:{gw_port}", receiver
        finally:
            d.terminate(timeout=120)
            for pid in marked_pids(root):
                os.kill(pid, signal.SIGKILL)


def _ask(client: openai.OpenAI, kind: str, rid: str) -> tuple[int, int]:
    """One request of each kind the SDK makes; (prompt, completion) tokens as it was told."""
    head: dict[str, Any] = {"extra_headers": {"X-Request-Id": rid}, "max_tokens": 5}
    chat = [{"role": "user", "content": PROMPT}]
    if kind == "completion":
        u = client.completions.create(model=SERVED, prompt=PROMPT, **head).usage
    elif kind == "chat":
        u = client.chat.completions.create(model=SERVED, messages=chat, **head).usage  # type: ignore[arg-type]
    else:
        chunks = list(client.chat.completions.create(
            model=SERVED, messages=chat, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, **head,
        ))  # fmt: skip
        u = chunks[-1].usage
    assert u is not None
    return u.prompt_tokens, u.completion_tokens


def _serves(client: openai.OpenAI) -> bool:
    """The gateway reads engine states every refresh_s: it may still call the engine starting."""
    try:
        head = {"X-Request-Id": "warm-up"}
        client.completions.create(model=SERVED, prompt="hi", max_tokens=1, extra_headers=head)
    except openai.APIStatusError as e:
        if e.status_code != 503:
            raise
        return False
    return True


def test_log_matches_the_sdk_and_spans_join_vllms(stack: tuple[Daemon, str, Phoenix]) -> None:
    d, url, receiver = stack
    db = d.root / "state" / "accounting.sqlite3"
    secret = KeyStore(connect(db)).create("Alice", "student", Limits()).secret
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0, timeout=120)
    wait_until(lambda: _serves(client), 60, "the gateway to serve the model")
    sent = {}
    for i, kind in enumerate(["completion", "chat", "stream", "chat"]):
        rid = f"telemetry-{kind}-{i}"
        sent[rid] = _ask(client, kind, rid)
    wait_until(
        lambda: (
            set(sent) <= {r.request_id for r in read_log(connect(db), RequestFilter(owner="Alice"))}
        ),
        30,
        "every request in the log",
    )
    logged = {r.request_id: r for r in read_log(connect(db), RequestFilter(owner="Alice"))}
    for rid, (prompt, completion) in sent.items():
        r = logged[rid]
        assert (r.prompt_tokens, r.completion_tokens, r.status) == (prompt, completion, 200)
        assert r.model == "tiny" and r.client and r.client.startswith("127.0.0.1:")
        assert r.ttft_s is not None and r.duration_s is not None and r.ttft_s <= r.duration_s
        assert r.trace_id and len(r.trace_id) == 32
    for rid, (prompt, completion) in sent.items():
        trace = logged[rid].trace_id
        assert trace is not None
        wait_until(lambda t=trace: len(receiver.spans(t)) >= 2, 60, f"both spans of {rid}")
        spans = {s["name"]: s for s in receiver.spans(trace)}
        gw = next(s for n, s in spans.items() if n != "llm_request")
        engine = spans["llm_request"]
        assert engine["parent_id"] == gw["context"]["span_id"]  # vLLM's span is the child
        a, e = gw["attributes"], engine["attributes"]
        assert a["gen_ai.request.model"] == SERVED and a["gen_ai.request.id"] == rid
        assert a["gen_ai.usage.input_tokens"] == a["gen_ai.usage.prompt_tokens"] == prompt
        assert a["gen_ai.usage.output_tokens"] == completion
        assert e["gen_ai.usage.prompt_tokens"] == prompt
        assert e["gen_ai.usage.completion_tokens"] == completion
        assert rid in e["gen_ai.request.id"]  # vLLM's form: "cmpl-{X-Request-Id}-0"
