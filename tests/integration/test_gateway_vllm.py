"""The official openai SDK against a real vLLM CPU engine through the daemon's gateway: chat,
completions, streaming, the models list; a client that disconnects frees the engine's slot;
bad input gets OpenAI-shaped errors; the gateway's kill -9 leaves the engine alone."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from orchestrator.daemon.gateway_keeper import ENV
from orchestrator.engine import marker
from orchestrator.engine.process import find_by_env
from tests.daemon_harness import (
    Daemon,
    cpu_vllm_daemon,
    free_ports,
    gateway_serves,
    marked_pids,
    wait_until,
)
from tests.vllm_support import engine_venv, tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TIMEOUT = 600
SERVED = "tiny-chat"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, int]]:
    root = tmp_path_factory.mktemp("gateway-vllm")
    engine_port, gw_port = free_ports(2)
    d = cpu_vllm_daemon(
        root,
        engine_venv(),
        [("tiny", SERVED, engine_port, "3g.40gb", True, tiny_model())],
        orchestrator={"standby": False, "backoff_initial_s": 0.5},
    )
    assert d.config_text is not None
    d.config_text += (
        f'\n[gateway]\nenabled = true\nlisten = "127.0.0.1:{gw_port}"\n'
        "gateway_only = true\nrefresh_s = 0.2\nmax_body_bytes = 100000\n"
    )
    d.write_config()
    d.start()
    try:
        d.wait_state("tiny", "ready", timeout=TIMEOUT)
        url = f"http://127.0.0.1:{gw_port}"
        wait_until(lambda: gateway_serves(url, SERVED), 30, "the gateway to serve the model")
        yield d, url, engine_port
    finally:
        d.terminate(timeout=120)
        for pid in marked_pids(root):
            os.kill(pid, signal.SIGKILL)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _metric(engine_port: int, name: str, labels: str = "") -> float:
    """One sample of the engine's own /metrics (the first whose labels contain `labels`)."""
    text = httpx.get(f"http://127.0.0.1:{engine_port}/metrics", timeout=5).text
    pattern = rf"^{re.escape(name)}\{{[^}}]*{re.escape(labels)}[^}}]*\}} ([0-9.e+]+)$"
    found = re.search(pattern, text, re.M)
    assert found, f"{name} {labels} missing"
    return float(found.group(1))


def _running(engine_port: int) -> float:
    return _metric(engine_port, "vllm:num_requests_running")


def test_sdk_models_chat_completions_streaming(stack: tuple[Daemon, str, int]) -> None:
    _, url, _ = stack
    client = _client(url)
    assert [m.id for m in client.models.list()] == [SERVED]
    chat = client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage is not None
    assert chat.usage.completion_tokens > 0
    done = client.completions.create(model=SERVED, prompt="def quicksort(", max_tokens=8)
    assert done.usage is not None and done.usage.completion_tokens == 8
    stream = client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=16,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 2 and text  # vLLM may merge tokens for a lagging reader
    assert all(c.usage is None for c in chunks)  # not asked for, not sent
    stream = client.completions.create(
        model=SERVED,
        prompt="a b c",
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    last = list(stream)[-1]
    assert last.usage is not None and last.usage.completion_tokens == 12


def test_disconnect_mid_stream_frees_the_engine_slot(stack: tuple[Daemon, str, int]) -> None:
    _, url, engine_port = stack
    # Eight long samples, so the engine is still generating when the client leaves.
    body = {"model": SERVED, "prompt": "once", "max_tokens": 1900, "n": 8, "stream": True,
            "ignore_eos": True}  # fmt: skip
    finished = _metric(engine_port, "vllm:request_success_total", 'finished_reason="length"')
    generated = _metric(engine_port, "vllm:generation_tokens_total")
    with httpx.Client(timeout=60) as c, c.stream("POST", f"{url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        seen = 0
        for chunk in r.iter_raw():
            seen += chunk.count(b"data: ")
            if seen >= 5:
                break
    # The client is gone: the gateway closed the engine connection and vLLM aborted the request.
    wait_until(lambda: _running(engine_port) == 0, 15, "num_requests_running back to 0")
    time.sleep(1)
    assert _metric(engine_port, "vllm:request_success_total", 'finished_reason="length"') == (
        finished
    ), "the request ran to its end: the disconnect did not abort it"
    assert _metric(engine_port, "vllm:generation_tokens_total") - generated < 8 * 1900


def test_bad_input_gets_openai_errors_and_no_slot_stays_busy(
    stack: tuple[Daemon, str, int],
) -> None:
    _, url, engine_port = stack
    client = _client(url)
    with pytest.raises(openai.NotFoundError) as nf:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.APIStatusError) as big:
        client.completions.create(model=SERVED, prompt="w " * 60000, max_tokens=2)
    assert big.value.status_code == 413
    with pytest.raises(openai.BadRequestError):  # vLLM's own refusal passes through
        client.completions.create(model=SERVED, prompt="x", max_tokens=-5)
    r = httpx.post(f"{url}/v1/chat/completions", content=b'{"model": ', timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_body"
    # A slow reader: it reads a long stream a little at a time and still gets all of it (vLLM
    # may put several tokens in one event for a reader that lags: the usage event counts them).
    body = {"model": SERVED, "prompt": "x", "max_tokens": 200, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    got = b""
    with httpx.Client(timeout=60) as c, c.stream("POST", f"{url}/v1/completions", json=body) as r:
        for chunk in r.iter_raw(512):
            got += chunk
            time.sleep(0.01)
    assert b'"completion_tokens":200' in got and got.endswith(b"data: [DONE]\n\n")
    wait_until(lambda: _running(engine_port) == 0, 15, "no request left running")


def test_gateway_kill9_leaves_the_engine_and_requests_resume(
    stack: tuple[Daemon, str, int],
) -> None:
    d, url, _ = stack
    state_dir = d.root / "state"
    owner = marker.DaemonMark.load(state_dir).tag
    (gateway,) = [t.proc.pid for t in find_by_env(ENV, owner) if t.value == owner]
    engine = d.status("tiny")["pid"]
    os.kill(gateway, signal.SIGKILL)
    wait_until(lambda: gateway_serves(url, SERVED), 30, "the gateway back")
    assert d.status("tiny")["pid"] == engine and d.status("tiny")["state"] == "ready"
    done = _client(url).completions.create(model=SERVED, prompt="again", max_tokens=4)
    assert done.usage is not None and done.usage.completion_tokens == 4
    assert Path(d.root / "logs" / "gateway.log").exists()
