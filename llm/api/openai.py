"""The OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models[/{id}]`."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import TYPE_CHECKING, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ..errors import LLMError, UnknownProviderError
from ..reply import Reply
from ..router import Router
from ..types import Chunk, GenerationParams, ProviderStatus
from .errors import error_event
from .schemas import ChatCompletionRequest, read_body
from .sessions import Turn, open_turn
from .turn import SSEResponse, begin, drain, log_done, rid

if TYPE_CHECKING:
    from .context import Context


async def chat_completions(request: Request):
    """OpenAI chat completions. `model` is a provider name, one of its `aliases`, or "default".

    The speech style (short, speakable answers) follows the server config; reply it off for one
    request with the extra body field `"style": "none"` (openai SDK: `extra_body={"style": "none"}`).
    A request with tools, a JSON response_format or logprobs is for a program: it is not styled.
    The knowledge (documents and FAQ) answers too unless `"knowledge": false` (extra_body); the reply's
    `sources` (on the last chunk of a stream) name what it used. `"session": "<id>"` (extra_body): the
    server keeps the conversation, used when the messages carry no earlier turns. A provider with
    replicas keeps a conversation on one server: the session's, else `prompt_cache_key`'s, else `user`'s.
    """
    body = await read_body(request, ChatCompletionRequest, request.app.state.ctx.max_body_bytes)
    system = "\n".join(m.text() for m in body.messages if m.role in ("system", "developer")) or None
    talk = [m for m in body.messages if m.role not in ("system", "developer")]
    last = talk[-1]
    history = [m.as_history() for m in (talk if last.role == "tool" else talk[:-1])]
    params = GenerationParams(max_new_tokens=body.max_completion_tokens or body.max_tokens, seed=body.seed,
                              temperature=body.temperature, top_p=body.top_p, stop=body.stop,
                              frequency_penalty=body.frequency_penalty,
                              presence_penalty=body.presence_penalty, extra=body.passed_on() or None)
    provider = None if body.model == "default" else body.model
    prompt = None if last.role == "tool" else last.text()     # after tool results: no new prompt
    turn = await open_turn(request, body.session, prompt) if prompt is not None else None
    reply = None
    try:
        if turn is not None and not history:    # the messages carry no earlier turns: the session's
            history = [m.as_dict() for m in await asyncio.to_thread(turn.sessions.history, body.session)]
        reply, chunks = await begin(request, prompt=prompt, provider=provider, history=history, system=system,
                                    params=params, style={"short": True, "none": False}.get(body.style),
                                    max_seconds=body.max_seconds, knowledge=body.knowledge,
                                    cancel=turn and turn.cancel, hold="none" if body.stream else "all",
                                    affinity=body.session or body.prompt_cache_key or body.user)
        meta = {"id": f"chatcmpl-{rid(request)}", "created": int(time.time())}
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            events, kept, turn = _openai_events(request, reply, chunks, meta, usage, turn), turn, None
            return SSEResponse(reply, events, on_close=kept and (lambda: kept.finish_later(reply.provider,
                                                                                       "hung_up")))
        await drain(request, reply, reply.chunks(chunks))
        log_done(request, reply)
        if turn is not None:    # kept before the reply says so
            turn.heard = [reply.text]
            await turn.finish(reply.provider)
            turn = None
    finally:
        if turn is not None:
            await turn.finish(reply and reply.provider, "error")
    message: dict = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message.update(content=reply.text or None, tool_calls=reply.tool_calls)
    choice = {"index": 0, "message": message, "finish_reason": reply.finish}
    if body.logprobs:
        choice["logprobs"] = {"content": reply.logprobs, "refusal": None}
    # a JSONResponse as FastAPI would make of the dict, without its recursive jsonable_encoder walk
    return JSONResponse({**meta, "object": "chat.completion", "model": reply.provider,
                         "timings": reply.timings, "sources": reply.sources, "choices": [choice],
                         "usage": reply.token_usage})


async def _openai_events(request: Request, reply: Reply, chunks: AsyncIterator[Chunk], meta: dict,
                         include_usage: bool, turn: Turn | None = None) -> AsyncIterator[dict | str]:
    """chat.completion.chunk events; with include_usage, every chunk has "usage": null and a last one
    with no choices carries the usage, as OpenAI streams it."""
    usage_field = {"usage": None} if include_usage else {}
    started = False

    def chunk(delta: dict, finish: str | None = None, logprobs: tuple = ()) -> dict:
        nonlocal started
        if not started and delta:
            delta, started = {"role": "assistant", **delta}, True
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": list(logprobs), "refusal": None}
        return {**meta, "object": "chat.completion.chunk", "model": reply.provider, "choices": [choice],
                **usage_field}

    try:
        async with aclosing(reply.chunks(chunks)) as items:
            async for item in items:
                if item.text:
                    yield chunk({"content": item.text})
                    if turn is not None:    # past the yield: the client took it
                        turn.heard.append(item.text)
                if item.tool_calls:
                    yield chunk({"tool_calls": [_streamed_call(c) for c in item.tool_calls]})
                if item.logprobs:
                    yield chunk({}, logprobs=item.logprobs)
        log_done(request, reply)
        if turn is not None:
            await turn.finish(reply.provider)
        yield {**chunk({}, reply.finish), "sources": reply.sources}
        if include_usage:
            yield {**chunk({}), "choices": [], "usage": reply.token_usage}
        yield "[DONE]"
    except Exception as e:  # noqa: BLE001 - the status line is sent: report it in the stream
        if turn is not None and not turn.done.is_set():
            await turn.finish(reply.provider, "error")
        yield error_event(request, e)


def _streamed_call(delta: dict) -> dict:
    """A tool-call delta as OpenAI streams it: always an index; id, type and name on its first delta."""
    out = {"index": delta.get("index", 0), **{k: v for k, v in delta.items() if k != "index"}}
    if "function" in out:
        out["function"] = {k: v for k, v in out["function"].items() if v is not None}
    return out


async def list_models(request: Request) -> dict:
    """Provider names in OpenAI's list shape, with readiness; each alias too, saying whose it is."""
    router: Router = request.app.state.ctx.router
    found = await statuses(request.app.state.ctx)
    data = [_model(name, status) for name, status in found.items()]
    data += [_model(alias, found[name], alias_of=name) for name in found
             for alias in router.settings.providers[name].aliases]
    return {"object": "list", "data": data}


async def get_model(request: Request, model_id: str) -> dict:
    """One provider (or alias) in OpenAI's model shape; 404 naming the valid ones."""
    router: Router = request.app.state.ctx.router
    name = router.resolve(model_id)
    if name not in router.names():
        known = ", ".join(router.names())
        raise UnknownProviderError(f"unknown model {model_id!r}", fix=f"use one of: {known}")
    found = await statuses(request.app.state.ctx, [name])
    return _model(model_id, found[name], alias_of=name if name != model_id else None)


def _model(name: str, status: dict, alias_of: str | None = None) -> dict:
    alias = {"alias_of": alias_of} if alias_of else {}
    return {"id": name, "object": "model", "created": 0, "owned_by": "avatar-llm-router", **alias, **status}


async def statuses(ctx: Context, names: list[str] | None = None) -> dict[str, dict]:
    def collect() -> dict[str, dict]:
        out = {}
        for name in names or ctx.router.names():
            try:
                s = ctx.router.status(name)
            except LLMError as e:
                s = ProviderStatus(False, e.message, e.fix)
            out[name] = {**s.as_dict(), "reason": ctx.router.redact(s.reason),
                         "last_error": ctx.router.redact(s.last_error)}
        return out

    return await asyncio.to_thread(collect)     # creating a provider may import a heavy SDK
