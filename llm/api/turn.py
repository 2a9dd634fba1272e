"""One generation behind an HTTP route: its text, timings and sentence events, the wait for its
first chunk, a client hanging up, and the server-sent event stream."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing
from typing import AsyncIterator, Mapping

from fastapi import Request
from fastapi.responses import StreamingResponse

from .. import speech
from ..router import Request as LLMRequest
from ..router import Router
from ..types import CancelToken, Chunk
from .schemas import ApiError

log = logging.getLogger("llm.api")
LOG_PROMPT_CHARS = 50
# OpenAI's finish reasons; another an upstream sends (vLLM's "abort", a legacy "function_call") reads "stop"
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


def rid(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


def _clip(text: str) -> str:
    """A prompt as one short log-safe line."""
    text = " ".join(text.split())
    return text if len(text) <= LOG_PROMPT_CHARS else text[:LOG_PROMPT_CHARS - 1] + "…"


class Turn:
    """One reply in progress: its text, the provider that answered, and timings."""

    def __init__(self, req: LLMRequest):
        self.req, self.cancel, self.start = req, CancelToken(), time.perf_counter()
        self.parts: list[str] = []
        self.provider = req.provider
        self.ttft_ms: float | None = None
        self.first_sentence_ms: float | None = None
        self.total_ms: float | None = None
        self.last_at: float | None = None     # when the newest chunk was made (buffered replies come late)
        self.emotion: str | None = None       # the emotion tag starting at the newest chunk
        self.events: list[dict] = []          # the sentence events so far
        self.tool_calls: list[dict] = []      # whole tool calls, merged from their deltas
        self.logprobs: list[dict] = []        # OpenAI's logprobs.content entries, when asked for
        self.finish_reason: str | None = None
        self.usage: Mapping[str, int] | None = None

    def mark(self, timing: str, at: float | None = None) -> None:
        """Record the time from the start to `at` (perf_counter; default now) under `timing`, once."""
        if getattr(self, timing) is None:
            at = time.perf_counter() if at is None else at
            setattr(self, timing, round((at - self.start) * 1000, 1))

    async def chunks(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """The reply's chunks, recorded on the way (text, tool calls, finish reason, usage); leaving
        early cancels the generation."""
        try:
            async for chunk in chunks:
                self.provider = chunk.provider
                if chunk.substantive:
                    self.last_at, self.emotion = chunk.at, chunk.emotion
                    self.mark("ttft_ms", chunk.at)
                if chunk.text:
                    self.parts.append(chunk.text)
                for call in chunk.tool_calls:
                    self._add_call(call)
                self.logprobs.extend(chunk.logprobs)
                self.finish_reason = chunk.finish_reason or self.finish_reason
                self.usage = chunk.usage or self.usage
                yield chunk
        finally:
            self.cancel.cancel()

    async def deltas(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[str]:
        """The reply's text pieces; leaving early cancels the generation."""
        async with aclosing(self.chunks(chunks)) as items:
            async for chunk in items:
                if chunk.text:
                    yield chunk.text

    def _add_call(self, delta: dict) -> None:
        """Merge one streamed tool-call delta (OpenAI's shape) into the whole calls: the arguments are
        joined; the id and name are not deltas (the first one given stands)."""
        index = delta.get("index", len(self.tool_calls))
        while len(self.tool_calls) <= index:
            self.tool_calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call, function = self.tool_calls[index], delta.get("function") or {}
        call["id"] = call["id"] or delta.get("id") or ""
        call["function"]["name"] = call["function"]["name"] or function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

    @property
    def finish(self) -> str:
        """Why the reply ended, in OpenAI's words."""
        reason = self.finish_reason if self.finish_reason in FINISH_REASONS else "stop"
        return "tool_calls" if self.tool_calls and reason == "stop" else reason

    async def sentences(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[dict]:
        """Speakable sentences, each as soon as it is complete: `sentence` (as displayed), `speech`
        (as a TTS engine should read it) and, when emotions are on, `emotion` (never null: a sentence
        the model gave no tag, Direct Reply's too, has the set's resting face, "neutral")."""
        splitter = speech.SentenceSplitter()
        async with aclosing(self.deltas(chunks)) as texts:
            async for text in texts:
                for sentence, emotion in splitter.feed_tagged(text, self.emotion):
                    self.mark("first_sentence_ms", self.last_at)
                    yield await self._event(sentence, emotion)
        for sentence, emotion in splitter.flush_tagged():
            self.mark("first_sentence_ms", self.last_at)
            yield await self._event(sentence, emotion)

    async def _event(self, sentence: str, emotion: str | None) -> dict:
        event = await speech.sentence_event(sentence, emotion or speech.resting_emotion(self.req.emotions))
        if not self.req.emotions:
            del event["emotion"]    # the field is for clients that asked for emotions
        self.events.append(event)
        return event

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def timings(self) -> dict[str, float]:
        self.mark("total_ms")
        return {"ttft_ms": self.ttft_ms if self.ttft_ms is not None else self.total_ms,
                "first_sentence_ms": self.first_sentence_ms if self.first_sentence_ms is not None
                else self.total_ms,
                "total_ms": self.total_ms}

    def log_done(self, rid: str) -> None:
        t = self.timings()
        log.info("%s done provider=%s chars=%d ttft=%.0fms first_sentence=%.0fms total=%.0fms", rid,
                 self.provider, len(self.text), t["ttft_ms"], t["first_sentence_ms"], t["total_ms"])


async def begin(request: Request, *, hold: str = "none", **kw) -> tuple[Turn, AsyncIterator[Chunk]]:
    """Validate the call and wait for its first chunk, so a failure before any text (unknown or
    unready provider, upstream down) is a real HTTP status rather than an error inside a 200 stream.
    With hold="all" (a reply sent whole) there is no such wait: `drain` meets the failure just as well.

    A client that hangs up meanwhile cancels the generation at once (and with it the upstream call).
    `hold`: how much the route holds back before the client sees it (see `Router.stream`)."""
    router: Router = request.app.state.ctx.router
    if router.built(kw.get("provider")):
        req = router.request(**kw)
    else:   # creating a provider may import a heavy SDK or read a model's files: not on the loop
        req = await asyncio.to_thread(router.request, **kw)
    log.info("%s %s provider=%s prompt=%r", rid(request), request.url.path, req.provider,
             _clip(req.prompt or "(tool results)"))
    turn = Turn(req)
    chunks = router.astream(req, cancel=turn.cancel, hold=hold)
    if hold == "all":   # nothing is sent before the whole reply: `drain` meets any failure
        return turn, _replay([], chunks)
    first_chunk = asyncio.ensure_future(anext(chunks))
    try:
        await _unless_hung_up(request, turn, first_chunk)
        first = first_chunk.result()
    except StopAsyncIteration:
        return turn, _replay([], chunks)
    except BaseException:
        await chunks.aclose()
        raise
    turn.mark("ttft_ms", first.at)
    return turn, _replay([first], chunks)


async def _unless_hung_up(request: Request, turn: Turn, work: asyncio.Future) -> None:
    """Wait for `work`; if the client hangs up first (uvicorn reports an http.disconnect message),
    cancel the turn, so no model slot or upstream socket is held for nobody, and raise 499."""
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
            turn.cancel.cancel()    # even if `work` never got to run
            await asyncio.wait({work})  # let it unwind before anyone closes what it iterates
    if work not in done:
        raise ApiError(499, "client_closed", "the client closed the connection before the reply")


async def _replay(head: list[Chunk], rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    async with aclosing(rest):
        for chunk in head:
            yield chunk
        async for chunk in rest:
            yield chunk


async def drain(request: Request, turn: Turn, items: AsyncIterator) -> None:
    """Consume a whole reply; a client that hangs up meanwhile cancels it."""
    async def consume() -> None:
        async with aclosing(items):
            async for _ in items:
                pass

    work = asyncio.ensure_future(consume())
    await _unless_hung_up(request, turn, work)
    work.result()


class EventStream(StreamingResponse):
    """Server-sent events for one turn; however the response ends (a gone client included),
    the turn's generation is cancelled, even if the stream never started."""

    media_type = "text/event-stream"

    def __init__(self, turn: Turn, events: AsyncIterator[dict | str]):
        self.turn = turn
        # X-Accel-Buffering: a reverse proxy (nginx) must pass each event on at once
        super().__init__(_encode_events(events),
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.turn.cancel.cancel()
            await self.body_iterator.aclose()


async def _encode_events(events: AsyncIterator[dict | str]) -> AsyncIterator[bytes]:
    async with aclosing(events):
        async for event in events:
            data = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
            yield f"data: {data}\n\n".encode()
