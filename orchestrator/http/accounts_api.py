"""The control plane's REST API for the gateway's keys (admin) and usage (a student: their own)."""

# No `from __future__ import annotations`: FastAPI must see the real dependency objects.

import time
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from orchestrator.accounting.database import DatabaseError
from orchestrator.accounting.keys import Key, KeyRefused, KeyStore, Limits
from orchestrator.accounting.models_source import students
from orchestrator.accounting.report import Filter, period_filter, usage
from orchestrator.accounting.request_log import (
    MAX_LIMIT,
    LoggedRequest,
    RequestFilter,
    parse_time,
    read_log,
)
from orchestrator.accounting.service import Accounts
from orchestrator.http.api import Admin, Who
from orchestrator.http.auth import Caller


class KeyIn(BaseModel):
    model_config = {"extra": "forbid"}
    owner: str = Field(min_length=1, max_length=200)
    kind: Literal["student", "service"] = "student"
    label: str = Field(default="", max_length=200)
    models: list[str] | None = None  # None: a student's own models (models.toml `student`)
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    max_tokens: int | None = None
    quota_tokens: int | None = None
    quota_period: str | None = None  # day, week or YYYY-MM-DD..YYYY-MM-DD

    def limits(self) -> Limits:
        models = tuple(self.models) if self.models is not None else None
        return Limits(
            models, self.rpm, self.tpm, self.max_concurrent, self.max_tokens,
            self.quota_tokens, self.quota_period,
        )  # fmt: skip


class KeyOut(BaseModel):
    id: str
    owner: str
    owner_kind: str
    label: str
    hint: str
    limits: dict[str, Any]
    created_at: float
    rotated_at: float | None
    revoked_at: float | None


class NewKeyOut(BaseModel):
    key: KeyOut
    secret: str  # shown this once; only its hash is kept


class UsageOut(BaseModel):
    group: dict[str, str]
    requests: int
    errors: int
    lost: int
    unmetered: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    mean_duration_s: float | None
    mean_ttft_s: float | None


def _out(k: Key) -> KeyOut:
    return KeyOut(**k.as_json())


def _accounts(request: Request) -> Accounts:
    accounts: Accounts = request.app.state.accounts
    return accounts


async def _keys(request: Request, change: Any) -> Any:
    try:
        return await _accounts(request).run(lambda conn: change(KeyStore(conn)))
    except KeyRefused as e:
        status = 404 if str(e).startswith("no key") else 400
        raise HTTPException(status, str(e)) from None
    except DatabaseError as e:
        raise HTTPException(503, str(e)) from None


def _owner_of(request: Request, who: Caller, asked: str | None) -> str | None:
    """The owner whose usage `who` may read: anyone's for the admin, a student's own only."""
    if who.admin:
        return asked
    cfg = request.app.state.control.target.supervisor.cfg
    model = cfg.models.get(who.model)
    student = model.student if model else None
    if student is None:
        raise HTTPException(403, f"model {who.model} has no `student` in models.toml")
    if asked not in (None, student):
        raise HTTPException(403, "a student sees only their own usage")
    return student


def _check_student(request: Request, body: KeyIn) -> None:
    cfg = request.app.state.control.target.supervisor.cfg
    if body.kind == "student" and body.models is None and body.owner not in students(cfg):
        raise HTTPException(
            400,
            f"no model in models.toml has student = {body.owner!r}: give the name the course "
            "uses, list the models, or make the owner a service",
        )


router = APIRouter()


@router.get("/api/v1/keys", response_model=list[KeyOut])
async def list_keys(
    request: Request, _: Admin, owner: str | None = None, all: bool = False
) -> list[KeyOut]:
    keys = await _keys(request, lambda s: s.list(owner=owner, include_revoked=all))
    return [_out(k) for k in keys]


@router.post("/api/v1/keys", status_code=201, response_model=NewKeyOut)
async def create_key(request: Request, body: KeyIn, _: Admin) -> NewKeyOut:
    _check_student(request, body)
    limits = body.limits()
    made = await _keys(request, lambda s: s.create(body.owner, body.kind, limits, body.label))
    return NewKeyOut(key=_out(made.key), secret=made.secret)


@router.post("/api/v1/keys/{key_id}/rotate", response_model=NewKeyOut)
async def rotate_key(request: Request, key_id: str, _: Admin) -> NewKeyOut:
    made = await _keys(request, lambda s: s.rotate(key_id))
    return NewKeyOut(key=_out(made.key), secret=made.secret)


@router.delete("/api/v1/keys/{key_id}", response_model=KeyOut)
async def revoke_key(request: Request, key_id: str, _: Admin) -> KeyOut:
    return _out(await _keys(request, lambda s: s.revoke(key_id)))


# A day exactly: pydantic's lax date would also take a number as a Unix time.
_DAY = r"^\d{4}-\d{2}-\d{2}$"


def _day(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


@router.get("/api/v1/usage", response_model=list[UsageOut])
async def read_usage(
    request: Request,
    who: Who,
    by: str = Query("owner,model", description="any of owner, key, model, day"),
    owner: str | None = None,
    model: str | None = None,
    period: str | None = Query(None, description="day, week or YYYY-MM-DD..YYYY-MM-DD"),
    since: Annotated[str | None, Query(pattern=_DAY, description="YYYY-MM-DD")] = None,
    until: Annotated[str | None, Query(pattern=_DAY, description="YYYY-MM-DD")] = None,
) -> list[UsageOut]:
    owner = _owner_of(request, who, owner)
    groups = tuple(g.strip() for g in by.split(",") if g.strip())
    try:
        days = (_day(since), _day(until))
        first, last = period_filter(period) if period else days
        where = Filter(owner, model, first, last)
        rows = await _accounts(request).run(lambda conn: usage(conn, groups, where))
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    return [UsageOut(**r.as_json()) for r in rows]


@router.get("/api/v1/requests", response_model=list[LoggedRequest])
async def read_requests(
    request: Request,
    who: Who,
    owner: str | None = None,
    model: str | None = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    errors: bool = False,
    since: str | None = Query(None, description="YYYY-MM-DD[THH:MM[:SS]], or an age: 2h, 7d"),
    until: str | None = Query(None, description="as since"),
    order: Literal["newest", "slowest"] = "newest",
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
) -> list[LoggedRequest]:
    """The request log; a student's token reads only their own requests."""
    owner = _owner_of(request, who, owner)
    try:
        now = time.time()
        where = RequestFilter(
            owner, model, status, errors,
            parse_time(since, now) if since else None,
            parse_time(until, now) if until else None,
            limit, order,
        )  # fmt: skip
        rows = await _accounts(request).run(lambda conn: read_log(conn, where))
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    except DatabaseError as e:
        raise HTTPException(503, str(e)) from None
    return rows
