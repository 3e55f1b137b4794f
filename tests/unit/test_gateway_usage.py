"""The gateway's usage tap: finds vLLM's usage event without decoding tokens, removes it on
request, and never holds back a token event."""

from __future__ import annotations

import json

from orchestrator.gateway.usage import BodyTail, StreamTap


def _event(obj: object) -> bytes:
    # vLLM serializes its chunks with pydantic: compact JSON.
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


TOKENS = [
    _event({"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": f" t{i}"}]})
    for i in range(5)
]
USAGE = _event(
    {
        "id": "c",
        "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    }
)
DONE = b"data: [DONE]\n\n"
STREAM = b"".join([*TOKENS, USAGE, DONE])


def _run(tap: StreamTap, pieces: list[bytes]) -> tuple[list[bytes], bytes]:
    out = [tap.feed(p) for p in pieces]
    return out, b"".join(out) + tap.end()


def test_passthrough_forwards_each_piece_unchanged_and_counts() -> None:
    pieces = [*TOKENS, USAGE, DONE]
    out, whole = _run(StreamTap(strip=False), pieces)
    assert out == pieces
    assert whole == STREAM


def test_usage_is_read_once_at_the_end() -> None:
    tap = StreamTap(strip=False)
    _run(tap, [*TOKENS, USAGE, DONE])
    usage = tap.usage()
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 5)


def test_strip_removes_the_usage_event_and_nothing_else() -> None:
    tap = StreamTap(strip=True)
    out, whole = _run(tap, [*TOKENS, USAGE + DONE])
    assert out[:5] == TOKENS  # token events go out as they come
    assert whole == b"".join([*TOKENS, DONE])
    assert tap.usage().completion_tokens == 5


def test_strip_at_every_split_point() -> None:
    """However the engine's bytes are cut into reads, the client gets the stream minus usage."""
    for cut in range(1, len(STREAM)):
        tap = StreamTap(strip=True)
        _, whole = _run(tap, [STREAM[:cut], STREAM[cut:]])
        assert whole == b"".join([*TOKENS, DONE]), cut
        assert tap.usage().prompt_tokens == 7, cut


def test_strip_holds_only_an_incomplete_event() -> None:
    tap = StreamTap(strip=True)
    assert tap.feed(TOKENS[0] + TOKENS[1][:10]) == TOKENS[0]
    assert tap.feed(TOKENS[1][10:]) == TOKENS[1]


def test_openai_style_null_usage_is_not_taken_for_the_usage_event() -> None:
    chunk = _event({"id": "c", "choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None})
    tap = StreamTap(strip=True)
    _, whole = _run(tap, [chunk, chunk, USAGE, DONE])
    assert whole == chunk + chunk + DONE
    assert tap.usage().completion_tokens == 5


def test_quoted_usage_inside_generated_text_is_not_a_key() -> None:
    sneaky = _event({"choices": [{"index": 0, "text": '"usage":{"prompt_tokens":1}'}]})
    tap = StreamTap(strip=True)
    _, whole = _run(tap, [sneaky, DONE])
    assert whole == sneaky + DONE
    assert tap.usage().prompt_tokens is None


def test_a_stream_without_event_boundaries_is_not_held_back_for_ever() -> None:
    tap = StreamTap(strip=True)
    blob = b"x" * (70 * 1024)
    out = tap.feed(blob[:1000])
    assert out == b""
    assert tap.feed(blob[1000:]) == blob  # past the limit everything goes, and stripping stops
    assert tap.feed(b"more") == b"more"


def test_body_tail_reads_usage_of_a_plain_answer() -> None:
    answer = json.dumps(
        {"choices": [{"text": "y" * 10000}], "usage": {"prompt_tokens": 3, "completion_tokens": 9}},
        separators=(",", ":"),
    ).encode()
    tail = BodyTail()
    for i in range(0, len(answer), 700):
        tail.feed(answer[i : i + 700])
    assert (tail.usage().prompt_tokens, tail.usage().completion_tokens) == (3, 9)


def test_body_tail_without_usage() -> None:
    tail = BodyTail()
    tail.feed(b'{"error":{"message":"bad"}}')
    assert tail.usage().prompt_tokens is None
