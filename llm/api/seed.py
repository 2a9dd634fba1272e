"""The seed API, `POST /`: Linly-Talker's `{"prompt"}` in, `{"response", ...}` out, or sentence events."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import datetime
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..reply import Reply
from ..types import Chunk, GenerationParams, history_pairs
from .errors import error_event
from .schemas import SeedRequest, read_body
from .sessions import Turn, open_turn
from .turn import SSEResponse, begin, drain, log_done


async def seed(request: Request):
    """Linly-Talker's API: `{"prompt": ...}` in, `{"response": ..., "history": ...}` out.

    Optional: history, max_length, top_p, temperature, provider, system, style ("short"/"none"),
    knowledge (false: answer without the documents and FAQ; the reply's `sources` name what was used),
    session (the server keeps the conversation: its history is used when the request sends none, and the
    turn is kept as far as it was heard), stream (server-sent events: `{"sentence"}` per speakable
    sentence, then `{"done": true, ...}`).
    """
    body = await read_body(request, SeedRequest, request.app.state.ctx.max_body_bytes)
    params = GenerationParams(max_new_tokens=body.max_length, temperature=body.temperature, top_p=body.top_p)
    history = [h.model_dump() if isinstance(h, BaseModel) else h for h in body.history or []]  # plain data
    turn = await open_turn(request, body.session, body.prompt)    # a reply still going is cut off first
    reply = None
    try:
        if turn is not None and body.heard is not None:
            await asyncio.to_thread(turn.sessions.heard, body.session, body.heard)
        if turn is not None and body.history is None:
            history = [m.as_dict() for m in await asyncio.to_thread(turn.sessions.history, body.session)]
        reply, chunks = await begin(request, prompt=body.prompt, provider=body.provider, system=body.system,
                                    history=history, params=params, emotions=body.emotions,
                                    style={"short": True, "none": False}.get(body.style),
                                    max_seconds=body.max_seconds, max_chars=body.max_chars,
                                    knowledge=body.knowledge, cancel=turn and turn.cancel,
                                    affinity=body.session, hold="sentence" if body.stream else "all")
        if body.stream:
            events, kept, turn = _seed_events(request, reply, chunks, turn), turn, None  # the stream keeps it
            return SSEResponse(reply, events, on_close=kept and (lambda: kept.finish_later(reply.provider,
                                                                                       "hung_up")))
        await drain(request, reply, reply.sentences(chunks))
        log_done(request, reply)
        if turn is not None:    # kept before the reply says so
            turn.heard = [e["sentence"] for e in reply.events]
            await turn.finish(reply.provider)
            turn = None
        events = reply.events if reply.req.emotions else [_unfelt(e) for e in reply.events]
        # a JSONResponse without FastAPI's jsonable_encoder walk
        return JSONResponse({**_seed_reply(reply, body.session), "sentences": events})
    finally:
        if turn is not None:    # failed or cut off before the client had any of it
            await turn.finish(reply and reply.provider, "error")


def _seed_reply(reply: Reply, session: str | None = None) -> dict:
    history = history_pairs(reply.req.history) + [[reply.req.prompt, reply.text]]
    return {"response": reply.text, "history": history, "status": 200,
            "time": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
            "provider": reply.provider, "timings": reply.timings, "sources": reply.sources,
            **({"session": session} if session else {})}


def _unfelt(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "emotion"}


async def _seed_events(request: Request, reply: Reply, chunks: AsyncIterator[Chunk],
                       turn: Turn | None) -> AsyncIterator[dict]:
    try:
        async with aclosing(reply.sentences(chunks)) as sentences:
            async for event in sentences:
                yield event if reply.req.emotions else _unfelt(event)
                if turn is not None:    # past the yield: the client took it
                    turn.heard.append(event["sentence"])
        log_done(request, reply)
        if turn is not None:
            await turn.finish(reply.provider)
        yield {"done": True, **_seed_reply(reply, turn and turn.session)}
    except Exception as e:  # noqa: BLE001 - the status line is sent: report it in the stream
        if turn is not None and not turn.done.is_set():
            await turn.finish(reply.provider, "error")
        yield error_event(request, e)
    # a client that went away mid-reply: SSEResponse's on_close keeps what it heard
