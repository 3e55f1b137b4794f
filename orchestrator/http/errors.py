"""Every error the control plane answers is JSON {"error": ...}, never a bare page or traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    # Starlette's own (an unmatched path such as a %2F in a name, a wrong method) included.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _bad_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
    return JSONResponse({"error": "; ".join(details), "details": details}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the daemon's log (uvicorn logs it), not to the caller.
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return JSONResponse({"error": "internal error; the daemon's log has the details"}, 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(Exception, _internal_error)
