"""The one place that turns any failure into each route's error shape (the seed API's, or OpenAI's)."""

from __future__ import annotations

import json
import logging
import math
import traceback
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import LLMError
from .schemas import ApiError
from .turn import rid

if TYPE_CHECKING:
    from .context import Context

log = logging.getLogger("llm.api")


def as_api_error(exc: Exception, route: str) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, LLMError):   # str() carries the fix too
        return ApiError(exc.status, exc.type, str(exc), param=getattr(exc, "param", None))
    if isinstance(exc, HTTPException):
        kind, message = {404: ("not_found", f"no route {route}: see /docs for the routes"),
                         405: ("method_not_allowed", f"method not allowed: {route}")
                         }.get(exc.status_code, ("http_error", str(exc.detail)))
        return ApiError(exc.status_code, kind, message)
    if isinstance(exc, RequestValidationError):
        return ApiError(422, "invalid_request_error", "; ".join(str(e.get("msg")) for e in exc.errors()[:3]))
    return ApiError(500, "internal_error", "internal server error: see the server log")


def error_response(ctx: Context, path: str, err: ApiError, headers: dict | None = None) -> JSONResponse:
    message, status = ctx.router.redact(err.message), err.status
    if path.startswith("/v1/"):
        # OpenAI answers an invalid request with 400, which the SDKs raise as BadRequestError; a 422
        # (UnprocessableEntityError) slips past code that catches the former.
        status = 400 if status == 422 else status
        body: dict = {"error": {"message": message, "type": err.type, "param": err.param, "code": err.type}}
    else:
        body = {"status": status, "error": {"type": err.type, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_event(request: Request, exc: Exception) -> dict:
    """An error that happened after the stream began, as the body of one SSE event."""
    err = log_error(request, exc)
    return {"error": json.loads(error_response(request.app.state.ctx, request.url.path, err).body)["error"]}


def log_error(request: Request, exc: Exception) -> ApiError:
    redact = request.app.state.ctx.router.redact
    err = as_api_error(exc, f"{request.method} {request.url.path}")
    if err.status == 500:   # a bug: keep the traceback, without secrets
        trace = "".join(traceback.format_exception(exc))
        log.error("%s internal error: %s", rid(request), redact(trace))
    else:
        log.log(logging.WARNING if err.status >= 500 else logging.INFO, "%s %s %s: %s", rid(request),
                err.status, err.type, redact(err.message))
    return err


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    err = log_error(request, exc)
    headers = getattr(exc, "headers", None) if isinstance(exc, HTTPException) else None
    # Retry-After for a 429/503 whose cause said when to come back (rounded up to whole seconds)
    if (wait := getattr(exc, "retry_after", None)) is not None and getattr(exc, "status", None) in (429, 503):
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
    return error_response(request.app.state.ctx, request.url.path, err, headers)
