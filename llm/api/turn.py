"""One reply behind an HTTP route (made by `llm.reply.Reply`): first-chunk wait, hang-ups, the SSE stream."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..reply import Reply
from ..router import Router
from ..types import CancelToken, Chunk
from .schemas import ApiError

log = logging.getLogger("llm.api")
LOG_PROMPT_CHARS = 50


def rid(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


def log_done(request: Request, reply: Reply) -> None:
    t = reply.timings
    log.info("%s done provider=%s chars=%d ttft=%.0fms first_sentence=%.0fms total=%.0fms", rid(request),
             reply.provider, len(reply.text), t["ttft_ms"], t["first_sentence_ms"], t["total_ms"])


async def begin(request: Request, *, hold: str = "none", cancel: CancelToken | None = None,
                **kw) -> tuple[Reply, AsyncIterator[Chunk]]:
    """Validate the call and wait for its first chunk, so a failure before any text (unknown or unready
    provider, upstream down) is a real HTTP status rather than an error inside a 200 stream; a client that
    hangs up meanwhile cancels the generation. `hold`: what the route holds back (see `Router.stream`)."""
    router: Router = request.app.state.ctx.router
    req = await router.arequest(**kw)
    prompt = " ".join((req.prompt or "(tool results)").split())    # one short line for the log
    log.info("%s %s provider=%s prompt=%r", rid(request), request.url.path, req.provider,
             prompt if len(prompt) <= LOG_PROMPT_CHARS else prompt[:LOG_PROMPT_CHARS - 1] + "…")
    reply = Reply(req, cancel)
    chunks = router.astream(req, cancel=reply.cancel, hold=hold)
    if hold == "all":   # a reply sent whole needs no wait: `drain` meets any failure just as well
        return reply, chunks
    first_chunk = asyncio.ensure_future(anext(chunks))
    try:
        await _unless_hung_up(request, reply, first_chunk)
        first = first_chunk.result()
    except StopAsyncIteration:
        return reply, chunks
    except BaseException:
        await chunks.aclose()
        raise
    return reply, _replay(first, chunks)


async def _unless_hung_up(request: Request, reply: Reply, work: asyncio.Future) -> None:
    """Wait for `work`; if the client hangs up first (uvicorn reports an http.disconnect message),
    cancel the reply, so no model slot or upstream socket is held for nobody, and raise 499."""
    async def hang_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hang_up())
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            reply.cancel.cancel()    # even if `work` never got to run
            await asyncio.wait({work})  # let it unwind before anyone closes what it iterates
    if work not in done:
        raise ApiError(499, "client_closed", "the client closed the connection before the reply")


async def _replay(first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """The first chunk, already read while waiting for it, then the rest."""
    async with aclosing(rest):
        yield first
        async for chunk in rest:
            yield chunk


async def drain(request: Request, reply: Reply, items: AsyncIterator) -> None:
    """Consume a whole reply; a client that hangs up meanwhile cancels it."""
    async def consume() -> None:
        async with aclosing(items):
            async for _ in items:
                pass

    work = asyncio.ensure_future(consume())
    await _unless_hung_up(request, reply, work)
    work.result()


class SSEResponse(StreamingResponse):
    """Server-sent events for one reply; however the response ends (a gone client included),
    the reply's generation is cancelled, even if the stream never started."""

    media_type = "text/event-stream"

    def __init__(self, reply: Reply, events: AsyncIterator[dict | str], on_close=None):
        """`on_close`: called last, however the response ended (even if the stream never began)."""
        self.reply, self.on_close = reply, on_close
        # X-Accel-Buffering: a reverse proxy (nginx) must pass each event on at once
        super().__init__(_encode_events(events),
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.reply.cancel.cancel()
            await self.body_iterator.aclose()
            if self.on_close is not None:
                self.on_close()


async def _encode_events(events: AsyncIterator[dict | str]) -> AsyncIterator[bytes]:
    async with aclosing(events):
        async for event in events:
            data = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
            yield f"data: {data}\n\n".encode()
