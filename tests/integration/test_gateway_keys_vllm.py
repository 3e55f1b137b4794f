"""Keys and usage in front of a real vLLM CPU engine, through the daemon's gateway, with the
official SDK: every limit, a burst of 50 against 10 a minute, and usage equal to the engine's
own token counters after the gateway was killed with SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import KeyStore, Limits
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
PROMPT = "one two three four five"
TOKENS = 8  # every answer: exactly this many (ignore_eos), so a lost one is bounded


class Stack:
    def __init__(self, d: Daemon, url: str, engine_port: int) -> None:
        self.d, self.url, self.engine_port = d, url, engine_port
        self.db = d.root / "state" / "accounting.sqlite3"
        self.keys = KeyStore(connect(self.db))

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.engine_port}/metrics", timeout=5).text
        found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        assert found, f"{name} missing"
        return float(found.group(1))

    def usage(self) -> tuple[int, int, int, int]:
        """Answered requests (without errors), prompt and completion tokens, lost requests."""
        with sqlite3.connect(self.db) as c:
            row = c.execute(
                "SELECT sum(requests) - sum(errors), sum(prompt_tokens), sum(completion_tokens), "
                "sum(lost) FROM usage_daily"
            ).fetchone()
        return tuple(v or 0 for v in row)  # type: ignore[return-value]

    def gateway_pid(self) -> int:
        owner = marker.DaemonMark.load(self.d.root / "state").tag
        (pid,) = [t.proc.pid for t in find_by_env(ENV, owner) if t.value == owner]
        return pid


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("keys-vllm")
    engine_port, gw_port = free_ports(2)
    d = cpu_vllm_daemon(
        root,
        engine_venv(),
        [("tiny", SERVED, engine_port, "3g.40gb", True, tiny_model())],
        orchestrator={"standby": False, "backoff_initial_s": 0.5},
    )
    assert d.config_text is not None
    d.config_text = d.config_text.replace(
        f'served_model_name = "{SERVED}"', f'served_model_name = "{SERVED}"\nstudent = "Alice"'
    ) + (
        f'\n[gateway]\nenabled = true\nlisten = "127.0.0.1:{gw_port}"\n'
        "gateway_only = true\nrefresh_s = 0.2\nkeys = true\n"
    )
    d.write_config()
    try:
        d.start(timeout=120)  # next to CPU engines, a loaded host imports slowly
        d.wait_state("tiny", "ready", timeout=TIMEOUT)
        s = Stack(d, f"http://127.0.0.1:{gw_port}", engine_port)
        probe = s.keys.create("Alice", "student", Limits(), label="probe").secret
        wait_until(lambda: gateway_serves(s.url, SERVED, probe), 30, "the gateway to serve it")
        yield s
    finally:
        d.terminate(timeout=120)
        for pid in marked_pids(root):
            os.kill(pid, signal.SIGKILL)


def _complete(client: openai.OpenAI, stream: bool) -> tuple[int, int]:
    """One answer of TOKENS tokens; (prompt, completion) as the client was told."""
    extra = {"ignore_eos": True}
    if not stream:
        done = client.completions.create(
            model=SERVED, prompt=PROMPT, max_tokens=TOKENS, extra_body=extra
        )
        assert done.usage is not None
        return done.usage.prompt_tokens, done.usage.completion_tokens
    chunks = list(client.completions.create(
        model=SERVED, prompt=PROMPT, max_tokens=TOKENS, stream=True,
        stream_options={"include_usage": True}, extra_body=extra,
    ))  # fmt: skip
    usage = chunks[-1].usage
    assert usage is not None
    return usage.prompt_tokens, usage.completion_tokens


def test_limits_on_a_real_engine(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        stack.client("sk-mig-nope-nope-nope").models.list()
    judge = stack.keys.create("judge", "service", Limits(models=("other",))).secret
    with pytest.raises(openai.NotFoundError):
        stack.client(judge).completions.create(model=SERVED, prompt="x", max_tokens=2)
    limits = Limits(models=(SERVED,), max_tokens=4, quota_tokens=30, quota_period="week")
    capped = stack.client(stack.keys.create("ta", "service", limits).secret)
    with pytest.raises(openai.BadRequestError) as e:
        capped.completions.create(model=SERVED, prompt="x", max_tokens=5)
    assert "cap of 4" in e.value.message
    done = capped.completions.create(model=SERVED, prompt="x", extra_body={"ignore_eos": True})
    assert done.usage is not None and done.usage.completion_tokens == 4  # the cap, applied
    with pytest.raises(openai.RateLimitError) as q:
        while True:  # each answer is charged in full, the last one past the quota too
            capped.completions.create(model=SERVED, prompt=PROMPT, max_tokens=4)
    assert q.value.code == "insufficient_quota"


async def test_a_burst_of_50_against_10_a_minute_lets_exactly_10_through(stack: Stack) -> None:
    key = stack.keys.create("burst", "service", Limits(models=(SERVED,), rpm=10)).secret
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)

    async def one() -> str:
        try:
            await client.completions.create(model=SERVED, prompt="x", max_tokens=1)
        except openai.RateLimitError as e:
            assert int(e.response.headers["retry-after"]) >= 1
            return "429"
        return "200"

    results = await asyncio.gather(*(one() for _ in range(50)))
    assert results.count("200") == 10 and results.count("429") == 40
    await client.close()


def test_usage_equals_the_engines_counters_after_a_gateway_kill_9(stack: Stack) -> None:
    client = stack.client(stack.keys.create("Alice", "student", Limits(), label="run").secret)
    wait_until(lambda: stack.metric("vllm:num_requests_running") == 0, 60, "an idle engine")
    prompt0 = stack.metric("vllm:prompt_tokens_total")
    gen0 = stack.metric("vllm:generation_tokens_total")
    requests0, p0, c0, lost0 = stack.usage()
    told: list[tuple[int, int]] = []
    failed = 0
    stop = time.monotonic() + 40
    lock = threading.Lock()

    def worker(i: int) -> None:
        nonlocal failed
        while time.monotonic() < stop:
            try:
                got = _complete(client, stream=i % 2 == 0)
            except (openai.APIConnectionError, openai.APIStatusError):
                with lock:
                    failed += 1
                time.sleep(0.2)
                continue
            with lock:
                told.append(got)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(12)
    os.kill(stack.gateway_pid(), signal.SIGKILL)  # mid-run: four requests in flight
    for t in threads:
        t.join()
    wait_until(lambda: stack.metric("vllm:num_requests_running") == 0, 60, "an idle engine")
    wait_until(lambda: stack.usage()[0] - requests0 >= len(told), 10, "the last usage rows")
    requests, p, c, lost = stack.usage()
    engine_prompt = stack.metric("vllm:prompt_tokens_total") - prompt0
    engine_gen = stack.metric("vllm:generation_tokens_total") - gen0
    # Every answer the client got is on disk, token for token.
    assert requests - requests0 == len(told)
    assert (p - p0, c - c0) == (sum(a for a, _ in told), sum(b for _, b in told))
    # What the engine did beyond that belongs to requests in flight at the kill, reported lost.
    lost_now = lost - lost0
    assert 1 <= lost_now <= 4 and failed >= lost_now
    per_prompt = told[0][0]
    missing_prompt = engine_prompt - (p - p0)
    assert missing_prompt % per_prompt == 0 and 0 <= missing_prompt // per_prompt <= lost_now
    assert 0 <= engine_gen - (c - c0) <= lost_now * TOKENS
    print(
        f"answers {len(told)}, lost at the kill {lost_now}; engine prompt/gen {engine_prompt:.0f}/"
        f"{engine_gen:.0f}, on disk {p - p0}/{c - c0}"
    )
