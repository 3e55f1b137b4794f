"""What admission hands the gateway per request: the caller, body and header changes, finish()."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.accounting.keys import Key
from orchestrator.accounting.scope import ModelRef, may_use
from orchestrator.gateway.admission import Caller, Outcome

Models = Callable[[], tuple[ModelRef, ...]]


@dataclass
class KeyedGrant:
    caller: Caller
    body_changes: Mapping[str, Any]
    upstream_headers: Mapping[str, str]
    wants_usage: bool
    request_id: str  # the accounting row's id; the gateway's X-Request-Id comes in the outcome
    key: Key = field(repr=False)
    model: str = field(repr=False)  # as models.toml names it, when known
    reserved: int = field(repr=False)  # tokens held against the limits until finish
    models: Models = field(repr=False)
    settle: Callable[[KeyedGrant, Outcome], Awaitable[None]] | None = field(
        default=None, repr=False
    )

    def allowed(self, model: str) -> bool:
        return may_use(self.key, model, self.models())

    async def finish(self, outcome: Outcome) -> None:
        """Release what admission held and charge what was used; returns once it is on disk."""
        settle, self.settle = self.settle, None  # exactly once, whatever the caller does
        if settle is not None:
            await settle(self, outcome)
