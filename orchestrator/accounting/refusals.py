"""Each refusal in the shape OpenAI's API gives it, so that SDKs raise their usual exceptions."""

from __future__ import annotations

from orchestrator.gateway.errors import ApiError


def _shown(api_key: str) -> str:
    # OpenAI shows a wrong key's first and last characters; a short one is not shown at all.
    return f"{api_key[:6]}***{api_key[-4:]}" if len(api_key) > 12 else "***"


def bad_key(api_key: str | None) -> ApiError:
    if not api_key:
        message = (
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'; "
            "ask the course's admin for one."
        )
    else:
        message = f"Incorrect API key provided: {_shown(api_key)}. Ask the course's admin for one."
    return ApiError(401, message, code="invalid_api_key")


def no_such_model(model: str) -> ApiError:
    # The same words as for a model that does not exist: a key must not learn other names.
    message = f"The model `{model}` does not exist or you do not have access to it."
    return ApiError(404, message, code="model_not_found", param="model")


def max_tokens_over(field: str, asked: object, cap: int) -> ApiError:
    message = f"{field} is {asked}, above this key's cap of {cap}; ask for {cap} or fewer."
    return ApiError(400, message, code="invalid_value", param=field)


def max_tokens_not_int(field: str, asked: object) -> ApiError:
    message = f"{field} must be a positive integer, not {asked!r}."
    return ApiError(400, message, code="invalid_type", param=field)


def rate_limited(
    key_id: str, what: str, unit: str, limit: int, used: int, retry_s: int
) -> ApiError:
    """`what` is OpenAI's type: "requests" or "tokens"; `unit` the limit's words."""
    return ApiError(
        429,
        f"Rate limit reached for key {key_id} on {unit}: Limit {limit}, Used {used}. "
        f"Please try again in {retry_s}s.",
        type=what,
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_s)},
    )


def quota_exhausted(
    owner: str, quota: int, period: str, spent: int, retry_s: int | None
) -> ApiError:
    when = f"it renews in {retry_s}s" if retry_s else "it does not renew"
    return ApiError(
        429,
        f"You exceeded your current quota: {owner} used {spent} of {quota} tokens for the "
        f"period {period}; {when}.",
        type="insufficient_quota",
        code="insufficient_quota",
        headers={"Retry-After": str(retry_s)} if retry_s else {},
    )


def outside_term(owner: str, period: str) -> ApiError:
    return ApiError(
        429,
        f"You exceeded your current quota: {owner}'s quota covers the term {period} only.",
        type="insufficient_quota",
        code="insufficient_quota",
    )
