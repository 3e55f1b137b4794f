"""`bench --workload random --input-len N` against a real vLLM CPU engine: every prompt, taken
from the request as it went out, is N tokens by the engine's own /tokenize."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from yarl import URL

from orchestrator.bench.openai_stream import Endpoint, Generation
from orchestrator.bench.runner import BenchPlan, Target, new_report, run_bench
from orchestrator.bench.vs_vllm import tiny_engine
from tests.vllm_support import engine_venv, tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
PATHS = {"/v1/completions", "/v1/chat/completions"}


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    with tiny_engine(engine_venv(), tiny_model()) as url:
        yield url


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The JSON body of every generation request, recorded as the bench's aiohttp session
    sends it (every request method of a session goes through `_request`)."""
    bodies: list[dict[str, Any]] = []
    request = aiohttp.ClientSession._request

    async def recording(self: aiohttp.ClientSession, method: str, url: Any, **kw: Any) -> Any:
        if URL(str(url)).path in PATHS:
            bodies.append(json.loads(json.dumps(kw["json"])))
        return await request(self, method, url, **kw)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", recording)
    return bodies


def _tokenize(url: str, body: dict[str, Any]) -> int:
    ask: dict[str, Any] = {"model": "tiny"}
    if "messages" in body:
        ask |= {"messages": body["messages"], "add_generation_prompt": True}
    else:
        ask["prompt"] = body["prompt"]
    r = httpx.post(f"{url}/tokenize", json=ask, timeout=60)
    r.raise_for_status()
    return int(r.json()["count"])


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize(("seed", "input_len"), [(0, 64), (7, 200), (123, 37)])
async def test_every_random_prompt_is_input_len_tokens_as_the_engine_counts_them(
    engine: str, sent: list[dict[str, Any]], endpoint: Endpoint, seed: int, input_len: int
) -> None:
    plan = BenchPlan(
        workload="random",
        endpoint=endpoint,
        concurrency=(3,),
        requests=6,
        gen=Generation(max_tokens=2, ignore_eos=True),
        input_len=input_len,
        seed=seed,
        warmup=1,
    )
    target = Target(engine, "tiny", f"{engine}/metrics")
    report = new_report(target, plan)
    await run_bench(target, plan, report, lambda _: None)
    assert report.refused is None, report.refused
    assert report.levels[0].completed == 6
    assert report.levels[0].served_input_tokens == (input_len, input_len)
    assert len(sent) == 7  # the warm-up and the six measured
    counts = [_tokenize(engine, body) for body in sent]
    assert all(abs(n - input_len) <= 1 for n in counts), counts
    assert len({json.dumps(body.get("prompt") or body.get("messages")) for body in sent}) == 7
