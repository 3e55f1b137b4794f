"""The dashboard's routes: its pages, static files, the JSON the page polls, and its actions.

Same tokens and rules as the REST API: the admin sees everything, a student only their model.
The page polls; nothing here runs unless a browser asks.
"""

# No `from __future__ import annotations`: FastAPI must see the real dependency objects.

import asyncio
import hashlib
import html
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel

from orchestrator.engine.lifecycle import Engine
from orchestrator.engine.states import Desired
from orchestrator.gpu.history import GpuHistory
from orchestrator.http.auth import METRICS_ONLY, Caller, Tokens
from orchestrator.http.dashboard import evaluation, payloads
from orchestrator.http.dashboard.engine_stats import EngineStats
from orchestrator.http.dashboard.sessions import COOKIE, CSRF_HEADER, Session, Sessions
from orchestrator.http.dashboard.usage_routes import usage_router
from orchestrator.supervisor.supervisor import Supervisor

# Overview: every engine, so its readings may be older; a model's page shows one, kept fresher.
OVERVIEW_MAX_AGE_S = 5.0
MODEL_MAX_AGE_S = 1.5
LOG_TAIL = 200

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}


class DashboardTarget(Protocol):
    supervisor: Supervisor
    tokens: Tokens
    gpu_history: GpuHistory


@dataclass(frozen=True)
class Hooks:
    """What the REST API lends the dashboard, so both act on models in one way."""

    engine_for: Callable[[str, Caller], Engine]  # HTTPException 404 / 403
    # Records what the caller wants, runs the command in the background, saves before answering.
    command: Callable[[Engine, Desired, Awaitable[None], str], Awaitable[object]]
    status_json: Callable[[Engine | Iterable[Engine]], bytes]  # the REST API's ModelStatus


@dataclass(frozen=True)
class Viewer:
    sid: str
    session: Session
    caller: Caller


class LoginBody(BaseModel):
    model_config = {"extra": "forbid"}
    token: str


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


def _assets() -> dict[str, _Asset]:
    """The committed static files, read once: package data, no build step, no CDN."""
    out = {}
    for item in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in _STATIC_TYPES:
            body = item.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            out[item.name] = _Asset(body, _STATIC_TYPES[suffix], etag)
    return out


def _secured(response: Response, cache: str = "no-store") -> Response:
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = cache
    return response


def _json(body: bytes | dict[str, Any], status: int = 200) -> Response:
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return _secured(Response(data, status_code=status, media_type="application/json"))


def _same_site(request: Request) -> bool:
    """False for a request another site's page sent (defence in depth beside SameSite=Strict)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


Dependency = Callable[..., Awaitable[Viewer]]


def _with_cookie(response: Response, request: Request, sid: str) -> Response:
    response.set_cookie(
        COOKIE,
        sid,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return response


class _Shared:
    """What every route of one dashboard uses: its sessions, engine stats and static files."""

    def __init__(self, target: DashboardTarget, hooks: Hooks) -> None:
        self.target = target
        self.hooks = hooks
        self.sessions = Sessions()
        self.stats = EngineStats(target.supervisor.cfg.orchestrator.metrics_timeout_s)
        self.assets = _assets()

    def who(self, request: Request) -> Viewer | None:
        sid = request.cookies.get(COOKIE)
        found = self.sessions.lookup(self.target.tokens, sid)
        return None if found is None or sid is None else Viewer(sid, *found)

    def page(self) -> Response:
        return _secured(Response(self.assets["app.html"].body, media_type="text/html"))

    def error_page(self, status: int, message: str) -> Response:
        text = html.escape(message)
        body = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{status} · mig-orchestrator</title>"
            '<link rel="stylesheet" href="/ui/static/dashboard.css"></head>'
            f'<body><main class="error-page"><h1>{status}</h1><p>{text}</p>'
            '<p><a href="/ui">Back to the dashboard</a></p></main></body></html>'
        )
        return _secured(Response(body, status_code=status, media_type="text/html"))

    def to_login(self) -> Response:
        return _secured(RedirectResponse("/ui/login", status_code=303))

    def session_body(self, caller: Caller, csrf: str) -> dict[str, Any]:
        return {
            "role": "admin" if caller.admin else "student",
            "model": caller.model,
            "csrf": csrf,
            "auth": self.target.tokens.enabled,
        }


def dashboard_router(target: DashboardTarget, hooks: Hooks) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    d = _Shared(target, hooks)

    async def viewer(request: Request) -> Viewer:
        v = d.who(request)
        if v is None:
            raise HTTPException(401, "log in first")
        return v

    async def acting(request: Request, v: Annotated[Viewer, Depends(viewer)]) -> Viewer:
        """A viewer whose request carries the session's CSRF token and came from this site."""
        if not _same_site(request) or not d.sessions.csrf_ok(
            v.session, request.headers.get(CSRF_HEADER)
        ):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")
        return v

    _pages(router, d)
    _session(router, d, acting)
    _data(router, d, viewer)
    _actions(router, d, acting)
    router.include_router(usage_router(target.supervisor, viewer, _usage_page(d), _json))
    return router


def _usage_page(d: _Shared) -> Callable[[Request], Awaitable[Response]]:
    async def page(request: Request) -> Response:
        v = d.who(request)
        if v is None:
            return d.page() if not d.target.tokens.enabled else d.to_login()
        return d.page() if v.caller.admin else d.error_page(403, "the usage page is the admin's")

    return page


def _pages(router: APIRouter, d: _Shared) -> None:
    @router.get("/")
    async def root() -> Response:
        return RedirectResponse("/ui", status_code=307)

    @router.get("/ui")
    async def overview_page(request: Request) -> Response:
        v = d.who(request)
        if v is None:
            return d.page() if not d.target.tokens.enabled else d.to_login()
        if not v.caller.admin:
            return _secured(RedirectResponse(f"/ui/models/{quote(v.caller.model or '')}", 303))
        return d.page()

    @router.get("/ui/login")
    async def login_page(request: Request) -> Response:
        return d.page()

    @router.get("/ui/models/{name}")
    async def model_page(name: str, request: Request) -> Response:
        v = d.who(request)
        if v is None:
            return d.page() if not d.target.tokens.enabled else d.to_login()
        try:
            d.hooks.engine_for(name, v.caller)
        except HTTPException as e:
            return d.error_page(e.status_code, str(e.detail))
        return d.page()

    @router.get("/ui/static/{file}")
    async def static(file: str, request: Request) -> Response:
        asset = d.assets.get(file)
        if asset is None:
            return d.error_page(404, f"no file {file!r}")
        headers = {"ETag": asset.etag}
        if request.headers.get("if-none-match") == asset.etag:
            return _secured(Response(status_code=304, headers=headers), "no-cache")
        response = Response(asset.body, media_type=asset.media_type, headers=headers)
        return _secured(response, "no-cache")


def _session(router: APIRouter, d: _Shared, acting: Dependency) -> None:
    @router.get("/ui/api/session")
    async def session(request: Request) -> Response:
        v = d.who(request)
        if v is not None:
            return _json(d.session_body(v.caller, v.session.csrf))
        if d.target.tokens.enabled:
            return _json({"error": "log in first", "auth": True}, 401)
        made = d.sessions.login(d.target.tokens, None)  # open mode: loopback only, no token exists
        assert made is not None
        sid, s, caller = made
        return _with_cookie(_json(d.session_body(caller, s.csrf)), request, sid)

    @router.post("/ui/api/login")
    async def login(body: LoginBody, request: Request) -> Response:
        if not _same_site(request):
            raise HTTPException(403, "log in from the dashboard's own page")
        if d.target.tokens.identify(f"Bearer {body.token.strip()}").metrics_only:
            raise HTTPException(403, METRICS_ONLY)
        made = d.sessions.login(d.target.tokens, body.token.strip())
        if made is None:
            raise HTTPException(401, "that token is not valid here")
        old = request.cookies.get(COOKIE)
        d.sessions.logout(old)  # a new log-in never inherits an older session
        sid, s, caller = made
        return _with_cookie(_json(d.session_body(caller, s.csrf)), request, sid)

    @router.post("/ui/api/logout")
    async def logout(v: Annotated[Viewer, Depends(acting)]) -> Response:
        d.sessions.logout(v.sid)
        response = _json({"ok": True})
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
        return response


def _data(router: APIRouter, d: _Shared, viewer: Dependency) -> None:
    @router.get("/ui/api/overview")
    async def overview(
        v: Annotated[Viewer, Depends(viewer)],
        since: Annotated[float, Query(ge=0)] = 0,
    ) -> Response:
        if not v.caller.admin:
            raise HTTPException(403, "the overview needs the admin token")
        sup = d.target.supervisor
        engines = [e for _, e in sorted(sup.engines.items())]
        numbers = await asyncio.gather(*(d.stats.get(e, OVERVIEW_MAX_AGE_S) for e in engines))
        hist = d.target.gpu_history
        extra = {
            "now": hist.latest_at,
            "gpus": payloads.gpus(hist.latest or sup.inventory.gpus, sup.engines),
            "history": payloads.history(hist.since(since)),
            "history_interval_s": hist.interval_s,
            "stats": {
                e.spec.name: None if n is None else asdict(n)
                for e, n in zip(engines, numbers, strict=True)
            },
        }
        return _json(payloads.merge(extra, models=d.hooks.status_json(engines)))

    @router.get("/ui/api/evaluation")
    async def evaluation_board(v: Annotated[Viewer, Depends(viewer)]) -> Response:
        if not v.caller.admin:
            raise HTTPException(403, "the evaluation needs the admin token")
        return _json(await evaluation.latest(d.target.supervisor.cfg.orchestrator.eval_db))

    @router.get("/ui/api/models/{name}")
    async def model(name: str, v: Annotated[Viewer, Depends(viewer)]) -> Response:
        e = d.hooks.engine_for(name, v.caller)
        m = d.target.supervisor.cfg.models.get(name)
        n = await d.stats.get(e, MODEL_MAX_AGE_S)
        extra = {
            "stats": None if n is None else asdict(n),
            "student": m.student if m else None,
            "needs_api_key": m is not None and m.api_key_file is not None,
        }
        return _json(payloads.merge(extra, status=d.hooks.status_json(e)))

    @router.get("/ui/api/models/{name}/logs")
    async def logs(
        name: str,
        v: Annotated[Viewer, Depends(viewer)],
        after: Annotated[int, Query(ge=-1)] = -1,
    ) -> Response:
        elog = d.hooks.engine_for(name, v.caller).log
        lines = list(elog.lines)  # complete lines only: a partial one is sent once it ends
        new = elog.count - after if 0 <= after <= elog.count else LOG_TAIL
        shown = lines[len(lines) - min(new, len(lines), LOG_TAIL) :]
        return _json({"next": elog.count, "lines": shown, "skipped": max(0, new - len(shown))})


def _actions(router: APIRouter, d: _Shared, acting: Dependency) -> None:
    @router.post("/ui/api/models/{name}/{verb}", status_code=202)
    async def act(
        name: str,
        verb: Literal["start", "stop", "restart"],
        v: Annotated[Viewer, Depends(acting)],
    ) -> Response:
        e = d.hooks.engine_for(name, v.caller)
        sup = d.target.supervisor
        ops: dict[str, Callable[[str], Awaitable[None]]] = {
            "start": sup.start,
            "stop": sup.stop,
            "restart": sup.restart,
        }
        desired = Desired.STOPPED if verb == "stop" else Desired.RUNNING
        await d.hooks.command(e, desired, ops[verb](name), f"{verb} {name} (dashboard)")
        return _json(d.hooks.status_json(e), 202)
