"""The admission seam as the gateway describes it: who calls, what they may do, how a request ended.

Provisional: these mirror the gateway's own admission module and give way to it once it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Caller:
    owner: str
    kind: str  # "student" or "service"
    key_id: str | None


class AdmissionError(Exception):
    """A refusal in OpenAI's error shape: HTTP status, error type and code, message, headers."""

    def __init__(
        self,
        status: int,
        type_: str,
        code: str | None,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class Outcome:
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    duration_s: float = 0.0
    error: str | None = None
    streamed: bool = False
    client: str | None = None
    request_id: str | None = None
    route: str | None = None


class Grant(Protocol):
    caller: Caller
    body_changes: dict[str, Any]

    def allowed(self, model: str) -> bool: ...

    async def finish(self, outcome: Outcome) -> None: ...


class Admission(Protocol):
    async def admit(self, api_key: str | None, model: str, body: dict[str, Any]) -> Grant: ...
