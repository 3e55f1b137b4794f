"""What admission changes in a request body: the max_tokens cap, and usage asked of streams."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.accounting import refusals

# Chat takes either; the newer name wins in OpenAI's API and in vLLM's protocol.py (0.11+).
TOKEN_FIELDS = ("max_completion_tokens", "max_tokens")


@dataclass(frozen=True)
class BodyPlan:
    changes: dict[str, Any]
    max_tokens: int  # what the request may generate at most; 0 when it generates nothing
    strip_usage_chunk: bool  # the client did not ask for the usage chunk that we did


def _generates(body: dict[str, Any]) -> bool:
    return "messages" in body or "prompt" in body


def plan_body(body: dict[str, Any], cap: int | None) -> BodyPlan:
    """Raises AdmissionError (400) for a max_tokens over the cap or not an integer."""
    changes: dict[str, Any] = {}
    limit = 0
    if _generates(body):
        asked = [(f, body[f]) for f in TOKEN_FIELDS if body.get(f) is not None]
        for field, value in asked:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise refusals.max_tokens_not_int(field, value)
            if cap is not None and value > cap:
                raise refusals.max_tokens_over(field, value, cap)
        if asked:
            limit = asked[0][1]
        elif cap is not None:
            changes["max_tokens"] = cap
            limit = cap
    strip = False
    if body.get("stream") is True:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        if options.get("include_usage") is not True:
            # The usage chunk is what makes a stream's tokens countable; a client that did not
            # ask for it does not see it (the gateway drops it).
            options["include_usage"] = True
            changes["stream_options"] = options
            strip = True
    return BodyPlan(changes, limit, strip)
