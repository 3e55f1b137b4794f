"""KeyedAdmission: the gateway's admission by API key, with limits and durable usage."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

from orchestrator.accounting import refusals
from orchestrator.accounting.body_rules import cap_max_tokens
from orchestrator.accounting.database import connect, database_path
from orchestrator.accounting.grants import KeyedGrant, Models
from orchestrator.accounting.journal import Journal
from orchestrator.accounting.key_cache import KeyCache
from orchestrator.accounting.keys import Key
from orchestrator.accounting.limits import MINUTE_S, KeyState, OwnerLedger
from orchestrator.accounting.models_source import ConfigModels
from orchestrator.accounting.periods import utc_day, window_at
from orchestrator.accounting.recording import Finished, Started, mark_lost
from orchestrator.accounting.request_log import prune, pruning
from orchestrator.accounting.scope import may_use, resolve
from orchestrator.config import load_config
from orchestrator.gateway.admission import Caller, Outcome

Clock = Callable[[], float]
# How often a running gateway deletes log rows past their retention.
PRUNE_EVERY_S = 3600.0
DEFAULT_KEEP_DAYS = 30


class KeyedAdmission:
    """One per gateway process; reads keys from, and writes usage to, state_dir's SQLite."""

    def __init__(
        self,
        path: Path,
        models: Models,
        clock: Clock = time.time,
        keep_days: int = DEFAULT_KEEP_DAYS,
    ) -> None:
        self.models = models
        self._clock = clock
        self._gateway = uuid.uuid4().hex
        self._conn = connect(path)
        self.lost_at_start = mark_lost(self._conn)
        self._keep_days = keep_days
        self._next_prune = clock() + PRUNE_EVERY_S
        prune(self._conn, keep_days, clock())
        self._keys = KeyCache(self._conn)
        self._states: dict[str, KeyState] = {}
        self._owners: dict[str, OwnerLedger] = {}
        self._load(clock())
        self._journal = Journal(path)

    @classmethod
    def for_config(cls, config: Path) -> KeyedAdmission:
        """For a gateway: the database under models.toml's state_dir, its models as they change."""
        models = ConfigModels(config)
        cfg = load_config(config)
        path = database_path(cfg.orchestrator.state_dir)
        return cls(path, models, keep_days=cfg.gateway.request_log_days)

    async def close(self) -> None:
        await asyncio.to_thread(self._journal.close)
        self._conn.close()

    async def admit(
        self, api_key: str | None, model: str | None, body: Mapping[str, Any]
    ) -> KeyedGrant:
        """Check and reserve in one step, with no await in between; raises ApiError."""
        now = self._clock()
        key = self._keys.lookup(api_key, now) if api_key else None
        if key is None:
            raise refusals.bad_key(api_key)
        caller = Caller(key.owner, key.owner_kind, key.id)
        refs = self.models()
        if model is None:  # a /v1/models listing: nothing to limit or count
            return KeyedGrant(caller, {}, {}, False, "", key, "", 0, self.models)
        if not may_use(key, model, refs):
            raise refusals.no_such_model(model)
        changes, reserve = cap_max_tokens(body, key.limits.max_tokens)
        self._check_quota(key, now)
        state = self._states.setdefault(key.id, KeyState())
        self._check_rates(key, state, now)
        state.in_flight += 1
        state.requests.add(now, 1)
        state.tokens.held += reserve
        self._owner(key.owner).held += reserve
        ref = resolve(model, refs)
        headers = ref.upstream_headers() if ref else {"authorization": ""}
        grant = KeyedGrant(
            caller, changes, headers, True, uuid.uuid4().hex, key,
            ref.name if ref else model, reserve, self.models, self._settle,
        )  # fmt: skip
        started = Started(grant.request_id, self._gateway, now, key.owner, key.id, grant.model)
        self._journal.submit(started.write())  # on disk within a batch; not waited for
        return grant

    def _check_quota(self, key: Key, now: float) -> None:
        quota, period = key.limits.quota_tokens, key.limits.quota_period
        if quota is None or period is None:
            return
        window = window_at(period, now)
        if window is None:
            raise refusals.outside_term(key.owner, period)
        ledger = self._owner(key.owner)
        spent = ledger.spent(window) + ledger.held
        if spent >= quota:
            retry = window.seconds_left(now) if period in ("day", "week") else None
            raise refusals.quota_exhausted(key.owner, quota, period, spent, retry)

    @staticmethod
    def _check_rates(key: Key, state: KeyState, now: float) -> None:
        lim = key.limits
        if lim.max_concurrent is not None and state.in_flight >= lim.max_concurrent:
            raise refusals.rate_limited(
                key.id, "requests", "concurrent requests", lim.max_concurrent, state.in_flight, 1
            )
        if lim.rpm is not None and (used := state.requests.used(now)) >= lim.rpm:
            retry = state.requests.retry_after(now, lim.rpm)
            raise refusals.rate_limited(
                key.id, "requests", "requests per min (RPM)", lim.rpm, used, retry
            )
        if lim.tpm is not None and (used := state.tokens.used(now)) >= lim.tpm:
            retry = state.tokens.retry_after(now, lim.tpm)
            raise refusals.rate_limited(
                key.id, "tokens", "tokens per min (TPM)", lim.tpm, used, retry
            )

    async def _settle(self, grant: KeyedGrant, outcome: Outcome) -> None:
        now = self._clock()
        key = grant.key
        prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
        metered = prompt is not None or completion is not None
        # An answer that ended without the engine's count (its client left mid-stream) is
        # charged what it reserved: leaving early must not be a way around a quota.
        unmetered = not metered and outcome.status < 400
        # A client that closes once the usage event is through (an SDK does, right after
        # `data: [DONE]`) got the whole answer: that is no error.
        failed = outcome.status >= 400 or (outcome.error is not None and not metered)
        charged = (prompt or 0) + (completion or 0) if metered else grant.reserved * unmetered
        state = self._states.setdefault(key.id, KeyState())
        state.in_flight -= 1
        state.tokens.held -= grant.reserved
        state.tokens.add(now, charged)  # a stream that overran is charged in full
        ledger = self._owner(key.owner)
        ledger.held -= grant.reserved
        day = utc_day(now)
        ledger.charge(day, charged)
        finished = Finished(
            grant.request_id, day, key.owner, key.id, grant.model, now, outcome.status,
            failed, prompt or 0, completion or 0,
            charged, unmetered, outcome.ttft_s, outcome.duration_s, outcome.streamed,
            outcome.route, outcome.client, outcome.error, outcome.request_id, outcome.trace_id,
        )  # fmt: skip
        if now >= self._next_prune:  # in the same writer, never a second one
            self._next_prune = now + PRUNE_EVERY_S
            self._journal.submit(pruning(self._keep_days, now))
        await self._journal.submit(finished.write())

    def _owner(self, name: str) -> OwnerLedger:
        return self._owners.setdefault(name, OwnerLedger())

    def _load(self, now: float) -> None:
        """What earlier gateway processes spent: owners' tokens per day, keys' last minute."""
        for owner, day, tokens in self._conn.execute(
            "SELECT owner, day, sum(charged_tokens) FROM usage_daily GROUP BY owner, day"
        ):
            self._owner(owner).charge(date.fromisoformat(day), int(tokens))
        since = now - MINUTE_S
        for key_id, started in self._conn.execute(
            "SELECT key_id, started_at FROM requests WHERE started_at > ? ORDER BY started_at",
            (since,),
        ):
            self._states.setdefault(key_id, KeyState()).requests.add(started, 1)
        for key_id, finished, tokens in self._conn.execute(
            "SELECT key_id, finished_at, charged_tokens FROM requests "
            "WHERE finished_at > ? ORDER BY finished_at",
            (since,),
        ):
            self._states.setdefault(key_id, KeyState()).tokens.add(finished, int(tokens))
