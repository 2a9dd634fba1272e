"""One reply, put together once: its text, tool calls, usage, timings and the avatar's sentences.

The API frames it (llm/api) and the page renders it (ui_handlers); neither adds it up again. The next
stages plug in around it: knowledge before the provider, a record of what was delivered after it.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import TYPE_CHECKING, AsyncIterator, Mapping

from . import speech
from .types import CancelToken, Chunk

if TYPE_CHECKING:
    from .router import Request

# OpenAI's finish reasons; another an upstream sends (vLLM's "abort", a legacy "function_call") reads "stop"
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


class Reply:
    """One reply to `req`, recorded as its chunks pass (tool calls merged from their deltas, timings in
    ms from the start). With `speak`, its sentences too (`events`), each as soon as it is complete:
    `sentence` (as displayed), `speech` (as a TTS engine should read it) and `emotion` (with emotions on,
    never None: a sentence the model gave no tag has the set's resting face, "neutral")."""

    def __init__(self, req: Request, cancel: CancelToken | None = None, speak: bool = False):
        self.req, self.speak = req, speak
        self.cancel = cancel or CancelToken()
        self.start = time.perf_counter()
        self.parts: list[str] = []
        self.provider = req.provider
        self.ttft_ms: float | None = None
        self.first_sentence_ms: float | None = None
        self.total_ms: float | None = None
        self.last_at: float | None = None     # when the newest chunk was made (buffered replies come late)
        self.emotion: str | None = None       # the emotion tag starting at the newest chunk
        self.events: list[dict] = []          # the sentences so far (with `speak`)
        self.tool_calls: list[dict] = []
        self.logprobs: list[dict] = []        # OpenAI's logprobs.content entries, when asked for
        self.finish_reason: str | None = None
        self.usage: Mapping[str, int] | None = None
        # what the knowledge gave the reply (llm.knowledge.Grounding.sources), best first
        self.sources: list[dict] = list(req.grounding.sources) if req.grounding else []
        self._splitter = speech.SentenceSplitter()

    def mark(self, timing: str, at: float | None = None) -> None:
        """Record the time from the start to `at` (perf_counter; default now) under `timing`, once."""
        if getattr(self, timing) is None:
            at = time.perf_counter() if at is None else at
            setattr(self, timing, round((at - self.start) * 1000, 1))

    async def chunks(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """The reply's chunks, recorded on the way; leaving early cancels the generation. With `speak`,
        the sentences a chunk completes are in `events` when it is yielded (the last one, unfinished,
        once the stream has ended)."""
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    self._record(chunk)
                    if self.speak and chunk.text:
                        await self._say(self._splitter.feed_tagged(chunk.text, self.emotion))
                    yield chunk
            self.mark("total_ms")
            if self.speak:
                await self._say(self._splitter.flush_tagged())
        finally:
            self.cancel.cancel()

    async def sentences(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[dict]:
        """The sentence events, each as soon as it is complete (this sets `speak`)."""
        self.speak, sent = True, 0
        async with aclosing(self.chunks(chunks)) as items:
            async for _ in items:
                for event in self.events[sent:]:
                    yield event
                sent = len(self.events)
        for event in self.events[sent:]:
            yield event

    def _record(self, chunk: Chunk) -> None:
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

    async def _say(self, sentences: list[tuple[str, str | None]]) -> None:
        faces = self.req.emotions
        for sentence, emotion in sentences:
            self.mark("first_sentence_ms", self.last_at)
            face = (emotion or speech.resting_emotion(faces)) if faces else None
            self.events.append(await speech.sentence_event(sentence, face))

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
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def finish(self) -> str:
        """Why the reply ended, in OpenAI's words."""
        reason = self.finish_reason if self.finish_reason in FINISH_REASONS else "stop"
        return "tool_calls" if self.tool_calls and reason == "stop" else reason

    @property
    def token_usage(self) -> dict[str, int]:
        """prompt_tokens, completion_tokens and total_tokens, 0 where nobody counted."""
        usage = dict(self.usage or {})
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": usage.get("total_tokens") or prompt + completion}

    @property
    def timings(self) -> dict[str, float]:
        """ttft_ms, first_sentence_ms and total_ms (a reply read to its end; else until now)."""
        total = self.total_ms
        if total is None:
            total = round((time.perf_counter() - self.start) * 1000, 1)
        return {name: total if getattr(self, name) is None else getattr(self, name)
                for name in ("ttft_ms", "first_sentence_ms", "total_ms")}
