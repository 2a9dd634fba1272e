"""The seed API, `POST /`: Linly-Talker's `{"prompt"}` in, `{"response", "status", "time"}` out,
or a stream of speakable sentence events."""

from __future__ import annotations

from contextlib import aclosing
from datetime import datetime
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ..types import Chunk, GenerationParams, history_pairs
from .errors import error_event
from .schemas import SeedRequest, read_body
from .turn import EventStream, Turn, begin, drain, rid


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
    return JSONResponse({**_seed_reply(turn), "sentences": turn.events})   # no jsonable_encoder walk


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
        yield error_event(request, e)
