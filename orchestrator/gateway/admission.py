"""What the gateway asks before it forwards a request, and tells after: the seam where keys,
limits and usage plug in. The gateway ships an open admission: everyone may use every model and
nothing is counted.

Order per request: the gateway parses the body, calls `admit` (which may raise an ApiError:
401, 404 for a model the key may not use, 429 with Retry-After, ...), then looks the model up
(404 unknown, 503 not ready), applies the grant's body changes, forwards, and calls
`grant.finish(outcome)` exactly once, also when the client went away or the engine failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

OwnerKind = Literal["student", "service", "anonymous"]


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as the admission knows them."""

    owner: str  # the course's name for a student, a service's name; "" when anonymous
    kind: OwnerKind
    key_id: str | None  # the key's public id (never the key); None without a key


ANONYMOUS = Caller(owner="", kind="anonymous", key_id=None)


@dataclass(frozen=True)
class Outcome:
    """How one admitted request ended, as the gateway saw it."""

    status: int  # the status the client got (the engine's, or the gateway's own error)
    prompt_tokens: int | None  # from the engine's usage, when the grant asked for it
    completion_tokens: int | None
    ttft_s: float | None  # request received -> first byte of the answer's body sent
    duration_s: float  # request received -> last byte sent (or the end, however it came)
    error: str | None  # why it did not complete: "client disconnected", "engine unreachable: ..."
    streamed: bool
    client: str | None  # the client's address, "host:port"
    request_id: str  # X-Request-Id: the client's, else the gateway's; the engine gets it too
    route: str  # "/v1/chat/completions", "/v1/models", ...
    model: str | None  # None for /v1/models
    trace_id: str | None = None  # the gateway span's trace (32 hex digits) when tracing is on


class Grant(Protocol):
    """An admitted request (or a /v1/models listing), as the admission wants it served."""

    @property
    def caller(self) -> Caller: ...

    @property
    def body_changes(self) -> Mapping[str, Any]:
        """Top-level body fields to set before forwarding (e.g. a `max_tokens` cap)."""
        ...

    @property
    def upstream_headers(self) -> Mapping[str, str]:
        """Request headers to set on the way to the engine, replacing the client's of the same
        name; an empty value removes the header (e.g. the client's key, which the engine must
        not see)."""
        ...

    @property
    def wants_usage(self) -> bool:
        """Fill Outcome's token counts. For streams this makes the gateway ask the engine for
        `stream_options.include_usage` and take the usage chunk out again when the client did
        not ask for it."""
        ...

    def allowed(self, model: str) -> bool:
        """Whether /v1/models lists this served model name to the caller."""
        ...

    async def finish(self, outcome: Outcome) -> None: ...


class Admission(Protocol):
    async def admit(self, api_key: str | None, model: str | None, body: Mapping[str, Any]) -> Grant:
        """Admit one request for `model` (None: a GET /v1/models listing, with an empty body);
        `api_key` is the bearer token the client sent. Raises errors.ApiError to refuse."""
        ...

    async def close(self) -> None:
        """Called once when the gateway stops, after the last finish()."""
        ...


@dataclass(frozen=True)
class OpenGrant:
    caller: Caller = ANONYMOUS
    body_changes: Mapping[str, Any] = field(default_factory=dict)
    upstream_headers: Mapping[str, str] = field(default_factory=dict)
    wants_usage: bool = False

    def allowed(self, model: str) -> bool:
        return True

    async def finish(self, outcome: Outcome) -> None:
        return None


_OPEN = OpenGrant()


class OpenAdmission:
    """The default: every caller may use every model; requests pass unchanged, nothing counted
    (an engine's own `api_key_file` still guards it, since the client's header passes through)."""

    async def admit(self, api_key: str | None, model: str | None, body: Mapping[str, Any]) -> Grant:
        return _OPEN

    async def close(self) -> None:
        return None
