"""Token counts from an answer without parsing its tokens.

vLLM ends a stream asked for `stream_options.include_usage` with one event whose object holds
`"usage":{...}` and no choices, then `data: [DONE]` (vLLM `entrypoints/openai/serving_chat.py`,
`serving_completion.py`); a plain answer carries `"usage":{...}` near its end. Each piece read
from the engine costs two C-level byte searches here; only the usage event itself is decoded,
once, at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_KEY = b'"usage":'
_EVENT_END = b"\n\n"
# Beyond this much without an event boundary the stream is not vLLM-shaped SSE: stop holding
# anything back (the client then sees the usage event it did not ask for, rather than a stall).
_MAX_CARRY = 64 * 1024
# A plain answer's usage object sits within its last bytes.
_TAIL = 4096


@dataclass
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _decode(text: bytes) -> Usage:
    """The usage object that `text` starts with (bytes just after `"usage":`)."""
    try:
        obj, _ = json.JSONDecoder().raw_decode(text.lstrip().decode())
    except (ValueError, UnicodeDecodeError):
        return Usage()
    if not isinstance(obj, dict):
        return Usage()
    prompt, completion = obj.get("prompt_tokens"), obj.get("completion_tokens")
    return Usage(
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def _is_object(data: bytes, at: int) -> bool:
    """Whether the `"usage":` at `at` holds an object (OpenAI sends `"usage":null` per chunk)."""
    return data[at + len(_KEY) : at + len(_KEY) + 2].lstrip()[:1] == b"{"


class StreamTap:
    """Watches a server-sent event stream for the usage event; with `strip`, removes it.

    Without `strip` every piece passes unchanged and at once. With it, the part of a piece after
    its last event boundary waits for the rest of that event (a client's SSE parser cannot use
    half an event either), so that a usage event split across reads is removed whole.
    """

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self._carry = b""
        self._event: bytes | None = None  # the last usage event seen, undecoded

    def feed(self, piece: bytes) -> bytes:
        """What to send on for this piece from the engine."""
        data = self._carry + piece if self._carry else piece
        end = data.rfind(_EVENT_END) + len(_EVENT_END)
        if end < len(_EVENT_END):  # no complete event yet
            return self._hold(data, piece)
        done, self._carry = data[:end], data[end:]
        at = done.rfind(_KEY)
        if at < 0 or not _is_object(done, at):
            return done if self.strip else piece
        start = done.rfind(_EVENT_END, 0, at) + len(_EVENT_END)
        start = 0 if start < len(_EVENT_END) else start
        stop = done.find(_EVENT_END, at) + len(_EVENT_END)
        self._event = done[start:stop]
        if not self.strip:
            return piece
        return done[:start] + done[stop:]

    def _hold(self, data: bytes, piece: bytes) -> bytes:
        if not self.strip:
            self._carry = data[-_MAX_CARRY:]
            return piece
        if len(data) > _MAX_CARRY:
            self.strip, self._carry = False, b""
            return data
        self._carry = data
        return b""

    def end(self) -> bytes:
        """What is left to send when the engine's stream ended."""
        left, self._carry = (self._carry if self.strip else b""), b""
        return left

    def usage(self) -> Usage:
        if self._event is None:
            return Usage()
        return _decode(self._event[self._event.rfind(_KEY) + len(_KEY) :])


class BodyTail:
    """Keeps the last bytes of a plain (not streamed) answer to read its usage at the end."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, piece: bytes) -> None:
        self._tail = (self._tail + piece)[-_TAIL:]

    def usage(self) -> Usage:
        at = self._tail.rfind(_KEY)
        if at < 0 or not _is_object(self._tail, at):
            return Usage()
        return _decode(self._tail[at + len(_KEY) :])
