"""The seed API, `POST /`: Linly-Talker's `{"prompt"}` in, `{"response", ...}` out, or sentence events."""

from __future__ import annotations

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
from .turn import SSEResponse, begin, drain, log_done


async def seed(request: Request):
    """Linly-Talker's API: `{"prompt": ...}` in, `{"response": ..., "history": ...}` out.

    Optional: history, max_length, top_p, temperature, provider, system, style ("short"/"none"),
    knowledge (false: answer without the documents and FAQ; the reply's `sources` name what was used),
    stream (server-sent events: `{"sentence"}` per speakable sentence, then `{"done": true, ...}`).
    """
    body = await read_body(request, SeedRequest, request.app.state.ctx.max_body_bytes)
    params = GenerationParams(max_new_tokens=body.max_length, temperature=body.temperature, top_p=body.top_p)
    history = [h.model_dump() if isinstance(h, BaseModel) else h for h in body.history or []]  # plain data
    reply, chunks = await begin(request, prompt=body.prompt, provider=body.provider, system=body.system,
                                history=history, params=params, emotions=body.emotions,
                                style={"short": True, "none": False}.get(body.style),
                                max_seconds=body.max_seconds, max_chars=body.max_chars,
                                knowledge=body.knowledge,
                                hold="sentence" if body.stream else "all")
    if body.stream:
        return SSEResponse(reply, _seed_events(request, reply, chunks))
    await drain(request, reply, reply.sentences(chunks))
    log_done(request, reply)
    events = reply.events if reply.req.emotions else [_unfelt(e) for e in reply.events]
    return JSONResponse({**_seed_reply(reply), "sentences": events})   # no jsonable_encoder walk


def _seed_reply(reply: Reply) -> dict:
    history = history_pairs(reply.req.history) + [[reply.req.prompt, reply.text]]
    return {"response": reply.text, "history": history, "status": 200,
            "time": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
            "provider": reply.provider, "timings": reply.timings, "sources": reply.sources}


def _unfelt(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "emotion"}


async def _seed_events(request: Request, reply: Reply, chunks: AsyncIterator[Chunk]) -> AsyncIterator[dict]:
    try:
        async with aclosing(reply.sentences(chunks)) as sentences:
            async for event in sentences:
                yield event if reply.req.emotions else _unfelt(event)
        log_done(request, reply)
        yield {"done": True, **_seed_reply(reply)}
    except Exception as e:  # noqa: BLE001 - the status line is sent: report it in the stream
        yield error_event(request, e)
