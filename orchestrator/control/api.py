"""The REST control plane: status, start/stop/restart, logs, reload, metrics."""

# No `from __future__ import annotations`: FastAPI must see the real dependency objects.

import asyncio
import dataclasses
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError

from orchestrator.config import ConfigError
from orchestrator.control.auth import Caller, Tokens
from orchestrator.control.standby_view import (
    LastStartOut,
    StandbyOut,
    last_start_json,
    standby_json,
)
from orchestrator.engine.lifecycle import Engine, EngineSpec
from orchestrator.engine.states import Desired
from orchestrator.gpu.inventory import Slice
from orchestrator.placement import PlacementError
from orchestrator.supervisor.supervisor import ReloadResult, Supervisor, UnknownModel

log = logging.getLogger(__name__)


class Controlled(Protocol):
    supervisor: Supervisor
    tokens: Tokens

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
        ex = e.last_exit
        return {
            "name": e.spec.name,
            "state": e.state.value,
            "desired": "running" if e.desired == "running" else "stopped",
            "pid": e.proc.pid if e.proc else None,
            "uptime_s": round(u, 3) if (u := e.uptime()) is not None else None,
            "restarts": e.restarts,
            "last_exit": (
                {"code": ex.code, "signal": ex.signal, "at": _iso(ex.at), "reason": ex.reason}
                if ex
                else None
            ),
            "reason": e.reason,
            "standby": standby_json(e),
            "last_start": last_start_json(e),
        }

    def _of(self, e: Engine) -> tuple[EngineSpec, dict[str, Any], str]:
        spec = e.spec
        cached = self._of_spec.get(e)
        if cached is None or cached[0] is not spec:
            host = self.public_host if spec.host in ("0.0.0.0", "::", "") else spec.host
            part = {
                "host": spec.host,
                "port": spec.port,
                "endpoint": f"http://{host}:{spec.port}/v1",
                "model": spec.model,
                "served_model_name": spec.served_model_name,
                "slice": slice_out(spec.slice, [spec.name]).model_dump() if spec.slice else None,
                "settings": spec.settings.set_fields(),
                "overrides": spec.overrides,
                "argv": spec.launch.argv,
            }
            cached = (spec, part, _json(part)[1:-1])
            self._of_spec[e] = cached
        return cached

    def _text(self, e: Engine) -> str:
        return "{" + _json(self._live(e))[1:-1] + "," + self._of(e)[2] + "}"

    def model(self, e: Engine) -> ModelStatus:
        return ModelStatus(**self._live(e), **self._of(e)[1])

    def response(self, engines: Iterable[Engine] | Engine) -> Response:
        """One status or a list, as JSON text: FastAPI passes a Response through untouched."""
        if isinstance(engines, Engine):
            body = self._text(engines)
        else:
            body = "[" + ",".join(map(self._text, engines)) + "]"
        return Response(body, media_type="application/json")


def create_app(target: Controlled, public_host: str) -> FastAPI:
    app = FastAPI(
        title="mig-orchestrator",
        summary="Control plane for per-student vLLM engines on MIG slices",
        version="1",
    )
    background: set[asyncio.Task[None]] = set()
    view = StatusView(public_host)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        return JSONResponse({"error": "; ".join(details), "details": details}, status_code=422)

    # async dependencies: FastAPI runs plain-def ones in a worker thread, a hand-off per request.
    async def caller(authorization: Annotated[str | None, Header()] = None) -> Caller:
        tokens = target.tokens
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

    def engine_for(name: str, who: Caller) -> Engine:
        try:
            e = target.supervisor.engine(name)
        except UnknownModel:
            raise HTTPException(404, f"no model named {name!r}") from None
        if not who.may_manage(name):
            raise HTTPException(403, f"your token does not grant access to model {name!r}")
        return e

    def run_later(op: Awaitable[None], what: str) -> None:
        async def wrapped() -> None:
            try:
                await op
            except Exception:
                log.exception("%s failed", what)

        task = asyncio.create_task(wrapped())
        background.add(task)
        task.add_done_callback(background.discard)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        ready, total = target.supervisor.counts()
        return {
            "status": "ok",
            "models": total,
            "ready": ready,
            "since": _iso(target.supervisor.started_at),
        }

    @app.get("/api/v1/slices", response_model=list[SliceOut])
    async def slices(_: Annotated[Caller, Depends(admin)]) -> list[SliceOut]:
        sup = target.supervisor
        return [slice_out(s, sup.plan.models_on(s.uuid)) for s in sup.inventory.slices]

    @app.get("/api/v1/models", response_model=list[ModelStatus])
    async def models(who: Annotated[Caller, Depends(caller)]) -> Response:
        return view.response(
            e for name, e in sorted(target.supervisor.engines.items()) if who.may_manage(name)
        )

    @app.get("/api/v1/models/{name}", response_model=ModelStatus)
    async def one_model(name: str, who: Annotated[Caller, Depends(caller)]) -> Response:
        return view.response(engine_for(name, who))

    def command(
        verb: str, op: Callable[[str], Awaitable[None]], desired: Desired
    ) -> Callable[..., Awaitable[ModelStatus]]:
        async def handler(name: str, who: Annotated[Caller, Depends(caller)]) -> ModelStatus:
            e = engine_for(name, who)
            e.want(desired)
            run_later(op(name), f"{verb} {name}")
            await asyncio.sleep(0)  # let the command take the model's lock and show its state
            return view.model(e)

        handler.__name__ = f"{verb}_model"
        return handler

    sup = target.supervisor
    for verb, desired in (("start", Desired.RUNNING), ("stop", Desired.STOPPED)):
        app.post(f"/api/v1/models/{{name}}/{verb}", status_code=202, response_model=ModelStatus)(
            command(verb, getattr(sup, verb), desired)
        )

    @app.post("/api/v1/models/{name}/restart", status_code=202, response_model=ModelStatus)
    async def restart_model(
        name: str, who: Annotated[Caller, Depends(caller)], body: RestartBody | None = None
    ) -> ModelStatus:
        e = engine_for(name, who)
        overrides = None if body is None else body.overrides
        if overrides is not None:
            overrides = {k: v for k, v in overrides.items() if v is not None}  # null = not set
            raw = {k for k in ("env", "extra_args") if overrides.get(k)}
            if raw and not who.admin:
                # Raw environment and arguments could run code as the daemon's user.
                raise HTTPException(
                    403, f"overriding {' and '.join(sorted(raw))} needs the admin token"
                )
            try:
                target.supervisor.validate_overrides(name, overrides)
            except ValidationError as exc:
                msgs = [
                    f"overrides.{'.'.join(map(str, x['loc']))}: {x['msg']}".replace(
                        "Value error, ", ""
                    )
                    for x in exc.errors()
                ]
                raise HTTPException(422, "; ".join(msgs)) from None
        e.want(Desired.RUNNING)
        run_later(target.supervisor.restart(name, overrides), f"restart {name}")
        await asyncio.sleep(0)
        return view.model(e)

    @app.get("/api/v1/models/{name}/logs", response_model=LogsOut)
    async def logs(
        name: str,
        who: Annotated[Caller, Depends(caller)],
        tail: Annotated[int, Query(ge=0, le=10000)] = 100,
    ) -> LogsOut:
        return LogsOut(model=name, lines=engine_for(name, who).log.tail(tail))

    @app.post("/api/v1/reload", response_model=ReloadOut)
    async def reload(_: Annotated[Caller, Depends(admin)]) -> ReloadOut:
        try:
            r = await target.reload()
        except ConfigError as e:
            raise HTTPException(422, "\n".join(str(e).splitlines())) from None
        except PlacementError as e:
            raise HTTPException(422, f"placement failed, old configuration kept: {e}") from None
        return ReloadOut(added=r.added, removed=r.removed, changed=r.changed, unchanged=r.unchanged)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(_: Annotated[Caller, Depends(admin)]) -> PlainTextResponse:
        started = time.perf_counter()
        body = await target.metrics()
        log.debug("metrics rendered in %.1f ms", (time.perf_counter() - started) * 1000)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
