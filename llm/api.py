"""The HTTP API: the seed `POST /`, an OpenAI-compatible `/v1`, and `/health`.

Every generation runs through `Router.astream` (a worker thread per call), so the event loop
never blocks and requests to cloud providers overlap. Bodies are read and parsed here, strictly,
so every bad input gets a 4xx in the route's error shape instead of a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
import traceback
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from . import speech
from .api_schemas import ApiError, ChatCompletionRequest, SeedRequest, openapi_with_bodies, read_body
from .api_server import ServerThread, check_bind_security, serve, start_in_thread
from .api_turn import EventStream, Turn, begin, drain, rid
from .errors import LLMError, UnknownProviderError
from .router import Router
from .types import Chunk, GenerationParams, ProviderStatus, history_pairs

__all__ = ["create_app", "ServerThread", "check_bind_security", "serve", "start_in_thread"]
log = logging.getLogger(__name__)
OPEN_PATHS = ("/health",)       # the only route that needs no API key


# ---- app -------------------------------------------------------------------------------------

@dataclass
class _Context:
    """What the routes share: the router, the limits, and the secrets that must never leak."""

    router: Router
    api_key: str | None
    max_body_bytes: int

    def authorized(self, scope: dict) -> bool:
        if not self.api_key or scope["path"] in OPEN_PATHS:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(),
                                                                           self.api_key.encode())
        return False

    def redact(self, text: str) -> str:
        """`text` with the server's key and every provider key replaced by ***."""
        return self.router.redact(text)


def create_app(router: Router, *, api_key: str | None = None, max_body_bytes: int = 1_000_000) -> FastAPI:
    """The FastAPI app for `router`; with `api_key`, every route but /health needs `Bearer <key>`."""
    app = FastAPI(title="Linly-Talker LLM API", version="2",
                  description="Seed API (`POST /`), OpenAI-compatible `/v1`, and `/health`.")
    app.state.ctx = ctx = _Context(router, api_key or None, max_body_bytes)
    router.add_secret(api_key)
    for exc_type in (ApiError, LLMError, HTTPException, RequestValidationError, Exception):
        app.add_exception_handler(exc_type, _handle_error)
    app.add_middleware(_Gate, ctx=ctx)
    app.add_api_route("/", seed, methods=["POST"], summary="Seed API: prompt in, reply out")
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"],
                      summary="OpenAI chat completions")
    app.add_api_route("/v1/models", list_models, methods=["GET"], summary="Providers, OpenAI list shape")
    app.add_api_route("/v1/models/{model_id}", get_model, methods=["GET"], summary="One provider")
    app.add_api_route("/health", health, methods=["GET"], summary="Liveness and provider readiness")
    app.openapi = lambda: openapi_with_bodies(app)
    # The TTS normaliser takes ~0.7 s to import: load it now, not on a user's first sentence with a number.
    threading.Thread(target=speech.for_tts, args=("1",), name="tts-warm-up", daemon=True).start()
    return app


def _retry_headers(exc: Exception) -> dict[str, str] | None:
    """Retry-After for a 429/503 whose cause said when to come back (rounded up to whole seconds)."""
    wait = getattr(exc, "retry_after", None)
    if wait is None or getattr(exc, "status", None) not in (429, 503):
        return None
    return {"Retry-After": str(max(1, math.ceil(wait)))}


class _Gate:
    """Before every route: a request id (logged and sent back as X-Request-ID), then the API key."""

    def __init__(self, app, ctx: _Context):
        self.app, self.ctx = app, ctx

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = rid
        status, start = [0], time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
                status[0] = message["status"]
            await send(message)

        try:
            if self.ctx.authorized(scope):
                await self.app(scope, receive, send_with_id)
            else:
                err = ApiError(401, "unauthorized",
                               "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
                await _error_response(self.ctx, scope["path"], err, {"WWW-Authenticate": "Bearer"})(
                    scope, receive, send_with_id)
        finally:
            log.info("%s %s %s -> %s in %.0f ms", rid, scope["method"], scope["path"], status[0] or "-",
                     (time.perf_counter() - start) * 1000)


# ---- errors: the one place that turns any failure into each route's error shape ----------------

def _as_api_error(exc: Exception, route: str = "") -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, LLMError):
        return ApiError(exc.status, exc.type, str(exc))     # str() carries the fix
    if isinstance(exc, HTTPException):
        kind, message = {404: ("not_found", f"no route {route}: see /docs for the routes"),
                         405: ("method_not_allowed", f"method not allowed: {route}")
                         }.get(exc.status_code, ("http_error", str(exc.detail)))
        return ApiError(exc.status_code, kind, message)
    if isinstance(exc, RequestValidationError):
        return ApiError(422, "invalid_request_error", "; ".join(str(e.get("msg")) for e in exc.errors()[:3]))
    return ApiError(500, "internal_error", "internal server error: see the server log")


def _error_response(ctx: _Context, path: str, err: ApiError, headers: dict | None = None) -> JSONResponse:
    message = ctx.redact(err.message)
    status = err.status
    if path.startswith("/v1/"):
        # OpenAI answers an invalid request with 400, which the SDKs raise as BadRequestError; a 422
        # (UnprocessableEntityError) slips past code that catches the former.
        status = 400 if status == 422 else status
        body: dict = {"error": {"message": message, "type": err.type, "param": err.param, "code": err.type}}
    else:
        body = {"status": status, "error": {"type": err.type, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _error_event(request: Request, exc: Exception) -> dict:
    """An error that happened after the stream began, as the body of one SSE event."""
    ctx: _Context = request.app.state.ctx
    err = _log_error(ctx, exc, rid(request))
    return {"error": json.loads(_error_response(ctx, request.url.path, err).body)["error"]}


def _log_error(ctx: _Context, exc: Exception, rid: str = "-", route: str = "") -> ApiError:
    err = _as_api_error(exc, route)
    if err.status == 500:   # a bug: keep the traceback, without secrets
        trace = "".join(traceback.format_exception(exc))
        log.error("%s internal error: %s", rid, ctx.redact(trace))
    else:
        log.log(logging.WARNING if err.status >= 500 else logging.INFO, "%s %s %s: %s", rid, err.status,
                err.type, ctx.redact(err.message))
    return err


async def _handle_error(request: Request, exc: Exception) -> JSONResponse:
    ctx: _Context = request.app.state.ctx
    err = _log_error(ctx, exc, rid(request), f"{request.method} {request.url.path}")
    headers = getattr(exc, "headers", None) if isinstance(exc, HTTPException) else _retry_headers(exc)
    return _error_response(ctx, request.url.path, err, headers)


# ---- the seed API ----------------------------------------------------------------------------

async def seed(request: Request):
    """Linly-Talker's API: `{"prompt": ...}` in, `{"response": ..., "history": ...}` out.

    Optional: history, max_length, top_p, temperature, provider, system, style ("short"/"none"),
    stream (server-sent events: `{"sentence"}` per speakable sentence, then `{"done": true, ...}`).
    """
    body = await read_body(request, SeedRequest, request.app.state.ctx.max_body_bytes)
    params = GenerationParams(max_new_tokens=body.max_length, temperature=body.temperature, top_p=body.top_p)
    style = None if body.style is None else body.style == "short"
    turn, chunks = await begin(request, prompt=body.prompt, provider=body.provider,
                                hold="sentence" if body.stream else "all",
                                history=body.history_data(), system=body.system, params=params, style=style,
                                max_seconds=body.max_seconds, max_chars=body.max_chars,
                                emotions=body.emotions)
    if body.stream:
        return EventStream(turn, _seed_events(request, turn, chunks))
    await drain(request, turn, turn.sentences(chunks))
    turn.log_done(rid(request))
    return {**_seed_reply(turn), "sentences": turn.events}


def _seed_reply(turn: Turn) -> dict:
    history = history_pairs(turn.req.history) + [[turn.req.prompt, turn.text]]
    return {"response": turn.text, "history": history, "status": 200,
            "time": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
            "provider": turn.provider, "timings": turn.timings()}


async def _seed_events(request: Request, turn: Turn, chunks: AsyncIterator[Chunk]) -> AsyncIterator[dict]:
    try:
        async with aclosing(turn.sentences(chunks)) as sentences:
            async for event in sentences:
                yield event
        turn.log_done(rid(request))
        yield {"done": True, **_seed_reply(turn)}
    except Exception as e:  # noqa: BLE001 - the status line is sent: report it in the stream
        yield _error_event(request, e)


# ---- the OpenAI-compatible API ---------------------------------------------------------------

async def chat_completions(request: Request):
    """OpenAI chat completions. `model` is a provider name or "default".

    The speech style (short, speakable answers) follows the server config; turn it off for one
    request with the extra body field `"style": "none"` (openai SDK: `extra_body={"style": "none"}`).
    """
    body = await read_body(request, ChatCompletionRequest, request.app.state.ctx.max_body_bytes)
    system = "\n".join(m.text() for m in body.messages if m.role in ("system", "developer")) or None
    history = [{"role": m.role, "content": m.text()} for m in body.messages[:-1]
               if m.role in ("user", "assistant")]
    params = GenerationParams(max_new_tokens=body.max_completion_tokens or body.max_tokens,
                              temperature=body.temperature, top_p=body.top_p)
    style = None if body.style is None else body.style == "short"
    provider = None if body.model == "default" else body.model
    turn, chunks = await begin(request, prompt=body.messages[-1].text(), provider=provider, history=history,
                                system=system, params=params, style=style, max_seconds=body.max_seconds,
                                hold="none" if body.stream else "all")
    meta = {"id": f"chatcmpl-{rid(request)}", "created": int(time.time())}
    if body.stream:
        return EventStream(turn, _openai_events(request, turn, chunks, meta))
    await drain(request, turn, turn.deltas(chunks))
    turn.log_done(rid(request))
    return {**meta, "object": "chat.completion", "model": turn.provider, "timings": turn.timings(),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": turn.text},
                         "finish_reason": "stop"}]}


async def _openai_events(request: Request, turn: Turn, chunks: AsyncIterator[Chunk],
                         meta: dict) -> AsyncIterator[dict | str]:
    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {**meta, "object": "chat.completion.chunk", "model": turn.provider,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    try:
        async with aclosing(turn.deltas(chunks)) as texts:
            async for text in texts:
                first = len(turn.parts) == 1
                yield chunk({"role": "assistant", "content": text} if first else {"content": text})
        turn.log_done(rid(request))
        yield chunk({}, "stop")
        yield "[DONE]"
    except Exception as e:  # noqa: BLE001 - the status line is sent: report it in the stream
        yield _error_event(request, e)


async def list_models(request: Request) -> dict:
    """Provider names in OpenAI's list shape, with readiness."""
    statuses = await _statuses(request.app.state.ctx)
    return {"object": "list", "data": [_model(name, status) for name, status in statuses.items()]}


async def get_model(request: Request, model_id: str) -> dict:
    """One provider in OpenAI's model shape; 404 naming the valid ones."""
    router: Router = request.app.state.ctx.router
    if model_id not in router.names():
        known = ", ".join(router.names())
        raise UnknownProviderError(f"unknown model {model_id!r}", fix=f"use one of: {known}")
    statuses = await _statuses(request.app.state.ctx, [model_id])
    return _model(model_id, statuses[model_id])


def _model(name: str, status: dict) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "linly-talker", **status}


async def health(request: Request) -> dict:
    """Always open (no API key): liveness, and whether each provider could answer now."""
    return {"status": "ok", "providers": await _statuses(request.app.state.ctx)}


async def _statuses(ctx: _Context, names: list[str] | None = None) -> dict[str, dict]:
    def collect() -> dict[str, dict]:
        out = {}
        for name in names or ctx.router.names():
            try:
                s = ctx.router.status(name)
            except LLMError as e:
                s = ProviderStatus(False, e.message, e.fix)
            out[name] = {**s.as_dict(), "reason": ctx.redact(s.reason),
                         "last_error": ctx.redact(s.last_error)}
        return out

    return await asyncio.to_thread(collect)     # creating a provider may import a heavy SDK
