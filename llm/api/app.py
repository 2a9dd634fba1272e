"""The FastAPI app: the seed `POST /`, an OpenAI-compatible `/v1`, `/health`, request ids and the key."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from .. import speech
from ..errors import LLMError
from ..router import Router
from .context import Context
from .docs import add_docs
from .errors import error_response, handle_error
from .openai import chat_completions, get_model, list_models, statuses
from .openapi import openapi_document
from .schemas import ApiError
from .seed import seed
from .sessions import heard, session

log = logging.getLogger("llm.api")


def create_app(router: Router, *, api_key: str | None = None, max_body_bytes: int = 1_000_000) -> FastAPI:
    """The FastAPI app for `router`; with `api_key`, every route but /health needs `Bearer <key>`."""
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await router.aclose_loop()  # upstream connections opened on this server's loop

    app = FastAPI(title="Avatar LLM Router API", version="2", lifespan=lifespan,
                  description="Seed API (`POST /`), OpenAI-compatible `/v1`, and `/health`.",
                  docs_url=None, redoc_url=None)    # add_docs below: the same pages, without a CDN
    app.state.ctx = ctx = Context(router, api_key or None, max_body_bytes)
    router.add_secret(api_key)
    for exc_type in (ApiError, LLMError, HTTPException, RequestValidationError, Exception):
        app.add_exception_handler(exc_type, handle_error)
    app.add_middleware(_Gate, ctx=ctx)
    app.add_api_route("/", seed, methods=["POST"], summary="Seed API: prompt in, reply out")
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"],
                      summary="OpenAI chat completions")
    app.add_api_route("/v1/models", list_models, methods=["GET"], summary="Providers, OpenAI list shape")
    app.add_api_route("/v1/models/{model_id:path}", get_model, methods=["GET"], summary="One provider")
    app.add_api_route("/sessions/{session_id}", session, methods=["GET", "DELETE"],
                      summary="GET: a conversation the server keeps; DELETE: forget it")
    app.add_api_route("/sessions/{session_id}/heard", heard, methods=["POST"],
                      summary="Only the first N sentences of the last reply were heard")
    app.add_api_route("/health", health, methods=["GET"], summary="Liveness and provider readiness")
    app.openapi = lambda: openapi_document(app)
    add_docs(app)   # /docs and /redoc with their JS and CSS served here, not from a CDN: they work offline
    # The TTS normaliser takes ~0.7 s to import: load it now, not on a user's first sentence with a number;
    # the knowledge's index (and embedding model) too, not on the first question.
    threading.Thread(target=speech.for_tts, args=("1",), name="tts-warm-up", daemon=True).start()
    if router.settings.knowledge.enabled:
        threading.Thread(target=_warm_knowledge, args=(router,), name="knowledge-warm-up",
                         daemon=True).start()
    return app


class _Gate:
    """Before every route: a request id (logged and sent back as X-Request-ID), then the API key."""

    def __init__(self, app, ctx: Context):
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
            if not self.ctx.authorized(scope):
                err = ApiError(401, "unauthorized",
                               "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
                await error_response(self.ctx, scope["path"], err, {"WWW-Authenticate": "Bearer"})(
                    scope, receive, send_with_id)
            elif (route := HOT_ROUTES.get((scope["method"], scope["path"]))) is not None:
                request = Request(scope, receive, send_with_id)
                try:
                    response = await route(request)
                except Exception as exc:  # noqa: BLE001 - every failure becomes its error response
                    response = await handle_error(request, exc)
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            log.info("%s %s %s -> %s in %.0f ms", rid, scope["method"], scope["path"], status[0] or "-",
                     (time.perf_counter() - start) * 1000)


# The generation routes skip FastAPI's routing and middleware stack (~0.15 ms a request, a tenth of what
# the router adds in front of a fast upstream), not its error shapes: `handle_error` still makes them.
HOT_ROUTES = {("POST", "/v1/chat/completions"): chat_completions, ("POST", "/"): seed}


def _warm_knowledge(router: Router) -> None:
    try:
        router.knowledge.refresh(force=True)
        router.knowledge.search("你好 hello")    # loads the segmenter's dictionary and the thesaurus
    except Exception:  # noqa: BLE001 - the first question will meet the same failure, and report it
        log.exception("knowledge: the index could not be brought up to date at start")


async def health(request: Request) -> dict:
    """Always open (no API key): liveness, and whether each provider could answer now."""
    return {"status": "ok", "providers": await statuses(request.app.state.ctx)}
