"""One try at one provider: its stream through the speech stages as Chunks (the last one with the
finish reason and the usage), the stall clock's touch at each delta, and a provider's generation slots."""

from __future__ import annotations

import threading
from contextlib import aclosing
from typing import AsyncIterator, Callable, Iterator, Mapping

from . import speech
from .errors import CancelledError
from .providers import Provider
from .types import CancelToken, Chunk, GenerationParams, Message, StreamEvent


def _check(cancel: CancelToken) -> None:
    if cancel.cancelled:
        raise CancelledError("generation cancelled")


async def _atouching(upstream: AsyncIterator, progress) -> AsyncIterator:
    """`_touching` for an async stream."""
    async with aclosing(upstream):
        async for text in upstream:
            progress()
            yield text


def _touching(upstream: Iterator[str], progress) -> Iterator[str]:
    """`upstream`, calling `progress()` at each delta (the policy's stall clock); closing this closes it."""
    try:
        for text in upstream:
            progress()
            yield text
    finally:
        upstream.close()


class Try:
    """One try at one provider: what is sent, and how the speech stages' pieces become Chunks (the
    last one with the finish reason and the usage: the upstream's, else counted here)."""

    def __init__(self, name: str, provider: Provider, params: GenerationParams, messages: list[Message],
                 budget: speech.Budget | None, speech_options: dict):
        self.name, self.provider, self.params, self.messages = name, provider, params, messages
        self.budget, self.speech = budget, speech_options
        self.said: list[str] = []
        self.finish: str | None = None
        self.usage: Mapping[str, int] | None = None

    def run(self, cancel: CancelToken, progress: Callable[[], None]) -> Iterator[Chunk]:
        """The provider's stream through the speech stages, as Chunks; closing it stops the upstream."""
        upstream = _touching(self.provider.stream(self.messages, self.params, cancel), progress)
        try:
            for piece, emotion in speech.speak(upstream, self.budget, **self.speech):
                _check(cancel)
                if (chunk := self.chunk(piece, emotion)) is not None:
                    yield chunk
            _check(cancel)     # a provider that ended because of the cancel
            yield self.last()
        finally:
            upstream.close()   # stops generation upstream when we stop early

    async def arun(self, cancel: CancelToken, progress: Callable[[], None]) -> AsyncIterator[Chunk]:
        """`run` on the event loop (`Provider.astream`)."""
        upstream = _atouching(self.provider.astream(self.messages, self.params, cancel), progress)
        pieces = speech.aspeak(upstream, self.budget, **self.speech)
        async with aclosing(upstream), aclosing(pieces):
            async for piece, emotion in pieces:
                _check(cancel)
                if (chunk := self.chunk(piece, emotion)) is not None:
                    yield chunk
        _check(cancel)
        yield self.last()

    def chunk(self, piece: str | StreamEvent, emotion: str | None) -> Chunk | None:
        if isinstance(piece, StreamEvent):
            self.finish, self.usage = piece.finish_reason or self.finish, piece.usage or self.usage
            if piece.tool_calls or piece.logprobs:
                return Chunk("", self.name, tool_calls=piece.tool_calls, logprobs=piece.logprobs)
            return None
        self.said.append(piece)
        return Chunk(piece, self.name, emotion)

    def last(self) -> Chunk:
        return Chunk("", self.name, finish_reason=self.finish or "stop",
                     usage=self.usage or _counted(self.provider, self.messages, "".join(self.said),
                                                  self.params.max_new_tokens))


def _counted(provider: Provider, messages: list[Message], reply: str, limit: int | None) -> dict[str, int]:
    """Token usage counted here when the upstream gave none: the provider's tokenizer, else the estimate,
    which is never above the `limit` of new tokens the reply was generated under."""
    prompt, completion = provider.count_tokens(messages), provider.text_tokens(reply)
    completion = min(completion, limit or completion)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Slot:
    """Waits for a free generation slot of a provider, giving up if the call is cancelled."""

    def __init__(self, sem: threading.BoundedSemaphore | None, cancel: CancelToken):
        self.sem, self.cancel = sem, cancel

    def __enter__(self):
        while self.sem is not None and not self.sem.acquire(timeout=0.05):
            if self.cancel.cancelled:
                raise CancelledError("generation cancelled while waiting for the model")
        return self

    def __exit__(self, *exc):
        if self.sem is not None:
            self.sem.release()
