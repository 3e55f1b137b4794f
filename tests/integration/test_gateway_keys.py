"""Keys, limits and usage through the real gateway process, with the official `openai` SDK, in
front of the null server: each error shape, usage asked of streams and hidden, revocation
mid-stream, and usage on disk equal to what the client was told."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import KeyStore, Limits
from tests.gateway_support import gateway, null_server

pytestmark = pytest.mark.slow

CONFIG = """
[orchestrator]
state_dir = "{state}"
[models.alice]
student = "Alice"
model = "stand-in"
served_model_name = "null"
port = 18001
[models.bob]
student = "Bob"
model = "stand-in"
served_model_name = "bob-chat"
port = 18002
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[str, KeyStore, Path]]:
    """A gateway with keys in front of the null server (model `null`, Alice's)."""
    config = tmp_path / "models.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state"))
    store = KeyStore(connect(tmp_path / "state" / "accounting.sqlite3"))
    with (
        null_server(tmp_path, "--token-delay", "0.02") as direct,
        gateway(tmp_path, [{"model": "null", "url": direct}], "--keys-config", str(config)) as (
            _,
            url,
        ),
    ):
        yield url, store, tmp_path / "state" / "accounting.sqlite3"


def _client(url: str, key: str) -> openai.OpenAI:
    # No retries: a 429 must reach the test as it was sent.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def _totals(db: Path, requests: int) -> tuple[int, int, int]:
    """Requests, prompt and completion tokens on disk, once `requests` are: the gateway records
    a request just after its last byte went out, so the client can be a moment ahead."""
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(db) as c:
            row = c.execute(
                "SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens) FROM usage_daily"
            ).fetchone()
        got = (row[0] or 0, row[1] or 0, row[2] or 0)
        if got[0] >= requests or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def test_every_error_shape_through_the_sdk(setup: tuple[str, KeyStore, Path]) -> None:
    url, store, _ = setup
    with pytest.raises(openai.AuthenticationError) as e401:
        _client(url, "sk-mig-not-a-key-at-all").completions.create(model="null", prompt="x")
    assert e401.value.code == "invalid_api_key"
    bob = store.create("Bob", "student", Limits(rpm=2, max_tokens=8)).secret
    with pytest.raises(openai.NotFoundError) as e404:  # Alice's model, to Bob: as if absent
        _client(url, bob).completions.create(model="null", prompt="x")
    assert e404.value.code == "model_not_found"
    assert [m.id for m in _client(url, bob).models.list()] == []
    alice = store.create("Alice", "student", Limits(rpm=2, max_tokens=8)).secret
    client = _client(url, alice)
    assert [m.id for m in client.models.list()] == ["null"]
    with pytest.raises(openai.BadRequestError) as e400:
        client.completions.create(model="null", prompt="x", max_tokens=9)
    assert "cap of 8" in e400.value.message and e400.value.code == "invalid_value"
    answer = client.completions.create(model="null", prompt="x")  # gets the cap
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    client.completions.create(model="null", prompt="x", max_tokens=3)
    with pytest.raises(openai.RateLimitError) as e429:
        client.completions.create(model="null", prompt="x")
    assert e429.value.code == "rate_limit_exceeded"
    assert 50 <= int(e429.value.response.headers["retry-after"]) <= 60
    # A quota is the owner's: Alice has spent more than 5 today, so a new owner it is.
    quota = Limits(models=("null",), quota_tokens=5, quota_period="day", max_tokens=8)
    poor = _client(url, store.create("judge", "service", quota).secret)
    poor.completions.create(model="null", prompt="x")  # 8 + prompt: past 5, charged in full
    with pytest.raises(openai.RateLimitError) as eq:
        poor.completions.create(model="null", prompt="x")
    assert eq.value.code == "insufficient_quota"


def test_streams_are_counted_and_the_usage_chunk_hidden_unless_asked(
    setup: tuple[str, KeyStore, Path],
) -> None:
    url, store, db = setup
    client = _client(url, store.create("Alice", "student", Limits(max_tokens=6)).secret)
    chunks = list(client.completions.create(model="null", prompt="a b c", stream=True))
    assert all(c.usage is None for c in chunks) and len(chunks) == 6
    told = [c.usage for c in client.completions.create(
        model="null", prompt="a b c", stream=True, stream_options={"include_usage": True}
    ) if c.usage]  # fmt: skip
    assert len(told) == 1
    plain = client.completions.create(model="null", prompt="a b c")
    assert plain.usage is not None
    requests, prompt, completion = _totals(db, 3)
    assert requests == 3
    assert prompt == told[0].prompt_tokens * 2 + plain.usage.prompt_tokens
    assert completion == 6 * 3


def test_revocation_mid_stream_lets_the_stream_finish_and_stops_the_next_request(
    setup: tuple[str, KeyStore, Path],
) -> None:
    url, store, db = setup
    made = store.create("Alice", "student", Limits())
    client = _client(url, made.secret)
    stream = client.completions.create(model="null", prompt="x", max_tokens=40, stream=True)
    got = [next(stream)]
    store.revoke(made.key.id)
    revoked_at = time.monotonic()
    got += list(stream)  # 40 tokens 20 ms apart: the revocation lands in the middle
    assert len(got) == 40
    while True:
        try:
            client.completions.create(model="null", prompt="x", max_tokens=1)
        except openai.AuthenticationError:
            break
        assert time.monotonic() - revoked_at < 1.5, "still admitted 1.5 s after revocation"
    assert _totals(db, 1) == (1, 1, 40)  # the stream; refused requests are not usage
