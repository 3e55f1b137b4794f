"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.

The official SDK maps the status to its exception class (404 -> NotFoundError, 503 ->
InternalServerError, ...) and shows `message`; `type` and `code` follow the names OpenAI's own API
uses, so clients written against it branch the same way here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


@dataclass
class ApiError(Exception):
    """An answer the gateway (or an admission) gives instead of the engine's."""

    status: int
    message: str
    type: str = INVALID_REQUEST
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. Retry-After

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


def model_not_found(model: str) -> ApiError:
    """The one answer for a model that does not exist and for one the caller may not use, so
    that the two cannot be told apart (model names do not leak)."""
    message = f"The model `{model}` does not exist or you do not have access to it."
    return ApiError(404, message, code="model_not_found", param="model")


def not_ready(model: str, state: str, reason: str | None) -> ApiError:
    why = f" ({reason})" if reason else ""
    return _unavailable(
        f"The model `{model}` is not ready: its engine is {state}{why}.", "model_not_ready"
    )


def unreachable(model: str, detail: str) -> ApiError:
    return _unavailable(
        f"The engine of model `{model}` cannot be reached: {detail}.", "engine_unreachable"
    )


def _unavailable(message: str, code: str) -> ApiError:
    return ApiError(
        503,
        f"{message} Try again later.",
        type=SERVER_ERROR,
        code=code,
        headers={"Retry-After": "5"},
    )


def bad_body(detail: str, param: str | None = None) -> ApiError:
    return ApiError(400, detail, code="invalid_body", param=param)


def too_large(limit: int) -> ApiError:
    message = f"The request body is larger than the gateway's limit of {limit} bytes."
    return ApiError(413, message, code="request_too_large")


def too_slow(seconds: float) -> ApiError:
    return ApiError(
        408, f"The request body did not arrive within {seconds:g} s.", code="request_timeout"
    )


def no_route(method: str, path: str) -> ApiError:
    return ApiError(
        404,
        f"Unknown request URL: {method} {path}. The gateway serves POST /v1/chat/completions, "
        "/v1/completions and /v1/embeddings, and GET /v1/models.",
        code="unknown_url",
    )
