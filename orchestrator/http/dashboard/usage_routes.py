"""The dashboard's usage: the admin's usage page, and a student's usage beside their model.

Kept apart from routes.py: the same session rules (viewer), its own page and JSON.
"""

# No `from __future__ import annotations`: FastAPI must see the real dependency objects.

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from orchestrator.accounting.models_source import model_refs
from orchestrator.accounting.service import Accounts
from orchestrator.accounting.usage_view import admin_view, student_view
from orchestrator.http.auth import Caller
from orchestrator.supervisor.supervisor import Supervisor


def usage_router(
    supervisor: Supervisor,
    viewer: Callable[..., Awaitable[Any]],
    page: Callable[[Request], Awaitable[Response]],
    to_json: Callable[[dict[str, Any]], Response],
) -> APIRouter:
    """`viewer` is the dashboard's session dependency (a value with `.caller`); `page` answers
    the usage page's HTML (or the log-in redirect)."""
    router = APIRouter(include_in_schema=False)

    async def read(request: Request, work: Callable[..., dict[str, Any]]) -> Response:
        accounts: Accounts = request.app.state.accounts
        if not accounts.path.exists():
            return to_json({"enabled": False})
        refs = model_refs(supervisor.cfg, engine_keys=False)
        data = await accounts.run(lambda conn: work(conn, refs, time.time()))
        return to_json({"enabled": True, **data})

    @router.get("/ui/usage")
    async def usage_page(request: Request) -> Response:
        return await page(request)

    @router.get("/ui/api/usage")
    async def admin_usage(request: Request, v: Annotated[Any, Depends(viewer)]) -> Response:
        if not v.caller.admin:
            raise HTTPException(403, "the usage page needs the admin token")
        return await read(request, admin_view)

    @router.get("/ui/api/models/{name}/usage")
    async def model_usage(
        name: str, request: Request, v: Annotated[Any, Depends(viewer)]
    ) -> Response:
        owner = _owner(supervisor, name, v.caller)
        return await read(request, lambda conn, refs, now: student_view(conn, owner, refs, now))

    return router


def _owner(supervisor: Supervisor, name: str, caller: Caller) -> str:
    """The student whose usage the page of model `name` shows; a student sees only their own."""
    if not caller.admin and caller.model != name:
        raise HTTPException(403, f"this token is for model {caller.model}, not {name}")
    m = supervisor.cfg.models.get(name)
    if m is None:
        raise HTTPException(404, f"no model {name!r}")
    if m.student is None:
        raise HTTPException(404, f"model {name} has no `student` in models.toml")
    return m.student
