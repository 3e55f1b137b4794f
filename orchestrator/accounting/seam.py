"""The admission seam as the gateway defines it (its admission and errors modules), mirrored.

Provisional: the gateway's own modules replace this file once they are on this branch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

OwnerKind = Literal["student", "service", "anonymous"]
INVALID_REQUEST = "invalid_request_error"


@dataclass(frozen=True)
class Caller:
    owner: str
    kind: OwnerKind
    key_id: str | None


@dataclass(frozen=True)
class Outcome:
    status: int
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_s: float | None
    duration_s: float
    error: str | None
    streamed: bool
    client: str | None
    request_id: str
    route: str
    model: str | None


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = INVALID_REQUEST
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()
