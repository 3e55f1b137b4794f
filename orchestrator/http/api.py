"""The REST control plane: status, start/stop/restart, logs, reload, metrics."""

# No `from __future__ import annotations`: FastAPI must see the real dependency objects.

import asyncio
import dataclasses
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel

from orchestrator.accounting.service import Accounts
from orchestrator.config import ConfigError
from orchestrator.engine.lifecycle import Engine, EngineSpec
from orchestrator.engine.states import Desired
from orchestrator.gpu.history import GpuHistory
from orchestrator.gpu.inventory import Slice
from orchestrator.http.auth import Caller, Tokens
from orchestrator.http.dashboard import Hooks, dashboard_router
from orchestrator.http.errors import install_error_handlers
from orchestrator.http.guard import RequestGuard
from orchestrator.http.redact import mask_env
from orchestrator.http.standby_view import (
    LastStartOut,
    StandbyOut,
    last_start_json,
    standby_json,
)
from orchestrator.placement import PlacementError
from orchestrator.supervisor.overrides import OverrideError
from orchestrator.supervisor.supervisor import (
    ReloadResult,
    StateNotSaved,
    Supervisor,
    UnknownModel,
)

log = logging.getLogger(__name__)


class Controlled(Protocol):
    supervisor: Supervisor
    tokens: Tokens
    gpu_history: GpuHistory

    async def reload(self) -> ReloadResult: ...

    async def metrics(self) -> str: ...


class SliceOut(BaseModel):
    uuid: str
    gpu_index: int
    gpu_uuid: str
    gpu_name: str
    profile: str | None
    memory_total_bytes: int
    memory_used_bytes: int
    gi_id: int | None
    ci_id: int | None
    models: list[str] = []


class ExitOut(BaseModel):
    code: int | None
    signal: int | None
    at: str
    reason: str


class ModelStatus(BaseModel):
    name: str
    state: str
    desired: Literal["running", "stopped"]
    pid: int | None
    host: str
    port: int
    endpoint: str
    model: str
    served_model_name: str
    slice: SliceOut | None
    uptime_s: float | None
    restarts: int
    last_exit: ExitOut | None
    reason: str | None
    settings: dict[str, Any]
    overrides: dict[str, Any]
    argv: list[str]
    standby: StandbyOut
    last_start: LastStartOut | None


class RestartBody(BaseModel):
    model_config = {"extra": "forbid"}
    overrides: dict[str, Any] | None = None


class LogsOut(BaseModel):
    model: str
    lines: list[str]


class ReloadOut(BaseModel):
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def slice_out(s: Slice, models: list[str]) -> SliceOut:
    return SliceOut(**dataclasses.asdict(s), models=models)


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


class StatusView:
    """ModelStatus as JSON without pydantic. What comes from the spec (argv, settings, slice: most
    of the bytes) is serialized once per spec; a request only serializes the few live fields.
    """

    def __init__(self, public_host: str) -> None:
        self.public_host = public_host
        self._of_spec: weakref.WeakKeyDictionary[Engine, tuple[EngineSpec, dict[str, Any], str]] = (
            weakref.WeakKeyDictionary()
        )

    def _live(self, e: Engine) -> dict[str, Any]:
        st = e.status()
        ex = st.last_exit
        return {
            "name": st.name,
            "state": st.state.value,
            "desired": st.desired.value,
            "pid": st.pid,
            "uptime_s": round(st.uptime_s, 3) if st.uptime_s is not None else None,
            "restarts": st.restarts,
            "last_exit": (
                {"code": ex.code, "signal": ex.signal, "at": _iso(ex.at), "reason": ex.reason}
                if ex
                else None
            ),
            "reason": st.reason,
            "standby": standby_json(e.spec.standby.enabled, st.standby),
            "last_start": last_start_json(st.last_start),
        }

    def _part(self, spec: EngineSpec, show_env: bool) -> dict[str, Any]:
        host = self.public_host if spec.host in ("0.0.0.0", "::", "") else spec.host
        settings, overrides = spec.settings.set_fields(), spec.overrides
        if not show_env:
            settings, overrides = mask_env(settings), mask_env(overrides)
        return {
            "host": spec.host,
            "port": spec.port,
            "endpoint": f"http://{host}:{spec.port}/v1",
            "model": spec.model,
            "served_model_name": spec.served_model_name,
            "slice": slice_out(spec.slice, [spec.name]).model_dump() if spec.slice else None,
            "settings": settings,
            "overrides": overrides,
            "argv": spec.launch.argv,
        }

    def _of(self, e: Engine) -> tuple[EngineSpec, dict[str, Any], str]:
        """The masked spec part, cached; env values are shown uncached, on request only."""
        spec = e.spec
        cached = self._of_spec.get(e)
        if cached is None or cached[0] is not spec:
            part = self._part(spec, show_env=False)
            cached = (spec, part, _json(part)[1:-1])
            self._of_spec[e] = cached
        return cached

    def _text(self, e: Engine, show_env: bool = False) -> str:
        spec = _json(self._part(e.spec, True))[1:-1] if show_env else self._of(e)[2]
        return "{" + _json(self._live(e))[1:-1] + "," + spec + "}"

    def model(self, e: Engine) -> ModelStatus:
        return ModelStatus(**self._live(e), **self._of(e)[1])

    def response(self, engines: Iterable[Engine] | Engine, show_env: bool = False) -> Response:
        """One status or a list, as JSON text: FastAPI passes a Response through untouched."""
        if isinstance(engines, Engine):
            body = self._text(engines, show_env)
        else:
            body = "[" + ",".join(self._text(e, show_env) for e in engines) + "]"
        return Response(body, media_type="application/json")


ShowEnv = Annotated[
    bool, Query(description="show env values (admin only); by default they are masked")
]


def _env_shown_to(who: Caller, show_env: bool) -> bool:
    if show_env and not who.admin:
        raise HTTPException(403, "env values are shown to the admin token only")
    return show_env


class ControlState:
    """What the routes share: the daemon, the status view and the commands still running."""

    def __init__(self, target: Controlled, public_host: str) -> None:
        self.target = target
        self.view = StatusView(public_host)
        self.background: set[asyncio.Task[None]] = set()

    def engine_for(self, name: str, who: Caller) -> Engine:
        try:
            e = self.target.supervisor.engine(name)
        except UnknownModel:
            raise HTTPException(404, f"no model named {name!r}") from None
        if not who.may_manage(name):
            raise HTTPException(403, f"your token does not grant access to model {name!r}")
        return e

    async def command(
        self,
        e: Engine,
        desired: Desired,
        op: Awaitable[None],
        what: str,
        undo: Callable[[], None] | None = None,
    ) -> ModelStatus:
        """Record what the caller wants and save it, then run `op` in the background (202) and
        answer the status. 503, with nothing changed, when it cannot be saved (`undo` takes back
        what the caller recorded besides the desired state)."""
        previous = e.desired
        e.want(desired)
        try:
            # A 202 must survive a daemon crash; a state_dir that takes no write refuses it.
            await self.target.supervisor.persist(force=True)
        except StateNotSaved as err:
            if isinstance(op, Coroutine):
                op.close()  # never run
            if undo is not None:
                undo()
            e.want(previous)
            raise HTTPException(503, f"{what} refused, nothing was changed: {err}") from None

        async def logged() -> None:
            try:
                await op
            except Exception:
                log.exception("%s failed", what)

        task = asyncio.create_task(logged())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        await asyncio.sleep(0)  # let the command take the model's lock and show its state
        return self.view.model(e)


def _control(request: Request) -> ControlState:
    control: ControlState = request.app.state.control
    return control


# async dependencies: FastAPI runs plain-def ones in a worker thread, a hand-off per request.
async def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    tokens = _control(request).target.tokens
    if not tokens.enabled:
        return Caller(admin=True)
    who = tokens.identify(authorization)
    if not who.known:
        raise HTTPException(401, "missing or wrong bearer token")
    return who


async def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not who.admin:
        raise HTTPException(403, "this call needs the admin token")
    return who


Who = Annotated[Caller, Depends(caller)]
Admin = Annotated[Caller, Depends(admin)]
router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    sup = _control(request).target.supervisor
    ready, total = sup.counts()
    return {"status": "ok", "models": total, "ready": ready, "since": _iso(sup.started_at)}


@router.get("/api/v1/slices", response_model=list[SliceOut])
async def slices(request: Request, _: Admin) -> list[SliceOut]:
    sup = _control(request).target.supervisor
    return [slice_out(s, sup.plan.models_on(s.uuid)) for s in sup.inventory.slices]


@router.get("/api/v1/models", response_model=list[ModelStatus])
async def models(request: Request, who: Who, show_env: ShowEnv = False) -> Response:
    ctl = _control(request)
    engines = sorted(ctl.target.supervisor.engines.items())
    return ctl.view.response(
        (e for name, e in engines if who.may_manage(name)), _env_shown_to(who, show_env)
    )


@router.get("/api/v1/models/{name}", response_model=ModelStatus)
async def one_model(name: str, request: Request, who: Who, show_env: ShowEnv = False) -> Response:
    ctl = _control(request)
    return ctl.view.response(ctl.engine_for(name, who), _env_shown_to(who, show_env))


@router.post("/api/v1/models/{name}/start", status_code=202, response_model=ModelStatus)
async def start_model(name: str, request: Request, who: Who) -> ModelStatus:
    ctl = _control(request)
    e = ctl.engine_for(name, who)
    return await ctl.command(e, Desired.RUNNING, ctl.target.supervisor.start(name), f"start {name}")


@router.post("/api/v1/models/{name}/stop", status_code=202, response_model=ModelStatus)
async def stop_model(name: str, request: Request, who: Who) -> ModelStatus:
    ctl = _control(request)
    e = ctl.engine_for(name, who)
    return await ctl.command(e, Desired.STOPPED, ctl.target.supervisor.stop(name), f"stop {name}")


@router.post("/api/v1/models/{name}/restart", status_code=202, response_model=ModelStatus)
async def restart_model(
    name: str, request: Request, who: Who, body: RestartBody | None = None
) -> ModelStatus:
    ctl = _control(request)
    e = ctl.engine_for(name, who)
    # Held from here and saved with the command: a 202 promises the restart with them even
    # across a crash; a refused command (503) takes them back.
    overrides, undo = _checked_overrides(ctl, name, who, None if body is None else body.overrides)
    sup = ctl.target.supervisor
    return await ctl.command(
        e, Desired.RUNNING, sup.restart(name, overrides), f"restart {name}", undo
    )


ADMIN_ONLY_OVERRIDES = ("env", "extra_args")


def _checked_overrides(
    ctl: ControlState, name: str, who: Caller, overrides: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, Callable[[], None] | None]:
    """Runtime overrides with nulls dropped, refused (403/422) before anything restarts, and
    what releases them if the command is refused."""
    if overrides is None:
        return None, None
    overrides = {k: v for k, v in overrides.items() if v is not None}  # null = not set
    raw = {k for k in ADMIN_ONLY_OVERRIDES if overrides.get(k)}
    if raw and not who.admin:
        # Raw environment and arguments could run code as the daemon's user.
        raise HTTPException(403, f"overriding {' and '.join(sorted(raw))} needs the admin token")
    if not who.admin:
        # A student changes only what a student may set: the admin's env and extra_args stay.
        current = ctl.target.supervisor.overrides_of(name)
        overrides = {**{k: current[k] for k in ADMIN_ONLY_OVERRIDES if k in current}, **overrides}
    try:
        return overrides, ctl.target.supervisor.accept_overrides(name, overrides)
    except OverrideError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/api/v1/models/{name}/logs", response_model=LogsOut)
async def logs(
    name: str,
    request: Request,
    who: Who,
    tail: Annotated[int, Query(ge=0, le=10000)] = 100,
) -> LogsOut:
    return LogsOut(model=name, lines=_control(request).engine_for(name, who).log.tail(tail))


@router.post("/api/v1/reload", response_model=ReloadOut)
async def reload(request: Request, _: Admin) -> ReloadOut:
    try:
        r = await _control(request).target.reload()
    except ConfigError as e:
        raise HTTPException(422, "\n".join(str(e).splitlines())) from None
    except PlacementError as e:
        raise HTTPException(422, f"placement failed, old configuration kept: {e}") from None
    return ReloadOut(added=r.added, removed=r.removed, changed=r.changed, unchanged=r.unchanged)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request, _: Admin) -> PlainTextResponse:
    started = time.perf_counter()
    body = await _control(request).target.metrics() + await request.app.state.accounts.exposition()
    log.debug("metrics rendered in %.1f ms", (time.perf_counter() - started) * 1000)
    return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(target: Controlled, public_host: str) -> FastAPI:
    app = FastAPI(
        title="mig-orchestrator",
        summary="Control plane for per-student vLLM engines on MIG slices",
        version="1",
    )
    app.state.control = ControlState(target, public_host)
    install_error_handlers(app)
    app.add_middleware(
        RequestGuard,
        tokens=lambda: target.tokens,
        body_timeout_s=lambda: target.supervisor.cfg.orchestrator.client_timeout_s,
        listen=lambda: target.supervisor.cfg.orchestrator.listen,
    )
    app.include_router(router)
    # Imported here: its routes use this module's caller dependencies.
    from orchestrator.http.accounts_api import router as accounts_router

    app.state.accounts = Accounts(target.supervisor.cfg.orchestrator.state_dir)
    app.include_router(accounts_router)
    ctl: ControlState = app.state.control
    hooks = Hooks(ctl.engine_for, ctl.command, lambda e: bytes(ctl.view.response(e).body))
    app.include_router(dashboard_router(target, hooks))
    return app
