"""What admission changes in a request body: the max_tokens cap, applied or enforced."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.accounting import refusals

# Chat takes either; the newer name wins in OpenAI's API and in vLLM's chat protocol.
TOKEN_FIELDS = ("max_completion_tokens", "max_tokens")


def _generates(body: Mapping[str, Any]) -> bool:
    return "messages" in body or "prompt" in body


def cap_max_tokens(body: Mapping[str, Any], cap: int | None) -> tuple[dict[str, Any], int]:
    """(body changes, the most tokens the request may generate: 0 for an embedding).

    Raises ApiError (400) for a max_tokens over the cap or not a positive integer.
    """
    if not _generates(body):
        return {}, 0
    asked = [(f, body[f]) for f in TOKEN_FIELDS if body.get(f) is not None]
    for field, value in asked:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise refusals.max_tokens_not_int(field, value)
        if cap is not None and value > cap:
            raise refusals.max_tokens_over(field, value, cap)
    if asked:
        return {}, asked[0][1]
    if cap is not None:
        return {"max_tokens": cap}, cap
    return {}, 0
