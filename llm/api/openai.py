"""The OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models[/{id}]`."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import TYPE_CHECKING, AsyncIterator

from fastapi import Request

from ..errors import LLMError, UnknownProviderError
from ..router import Router
from ..types import Chunk, GenerationParams, ProviderStatus
from .errors import error_event
from .schemas import ChatCompletionRequest, read_body
from .turn import EventStream, Turn, begin, drain, rid

if TYPE_CHECKING:
    from .app import Context


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
        yield error_event(request, e)


async def list_models(request: Request) -> dict:
    """Provider names in OpenAI's list shape, with readiness."""
    found = await statuses(request.app.state.ctx)
    return {"object": "list", "data": [_model(name, status) for name, status in found.items()]}


async def get_model(request: Request, model_id: str) -> dict:
    """One provider in OpenAI's model shape; 404 naming the valid ones."""
    router: Router = request.app.state.ctx.router
    if model_id not in router.names():
        known = ", ".join(router.names())
        raise UnknownProviderError(f"unknown model {model_id!r}", fix=f"use one of: {known}")
    found = await statuses(request.app.state.ctx, [model_id])
    return _model(model_id, found[model_id])


def _model(name: str, status: dict) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "linly-talker", **status}


async def statuses(ctx: Context, names: list[str] | None = None) -> dict[str, dict]:
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
