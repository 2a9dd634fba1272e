"""One try at one provider (`Try`: its stream through the speech stages as Chunks), and its `Slots`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from typing import AsyncIterator, Callable, Mapping

from . import speech
from .errors import CancelledError
from .providers import Provider
from .types import CancelToken, Chunk, GenerationParams, Message, StreamEvent


async def _touching(upstream: AsyncIterator, progress) -> AsyncIterator:
    """`upstream`, calling `progress()` (the policy's stall clock) at each delta; closing this closes it."""
    async with contextlib.aclosing(upstream):
        async for text in upstream:
            progress()
            yield text


class Try:
    """One try at one provider: what is sent, and how the speech stages' pieces become Chunks."""

    def __init__(self, name: str, provider: Provider, params: GenerationParams, messages: list[Message],
                 budget: speech.Budget | None, speech_options: dict, slots: Slots):
        self.name, self.provider, self.params, self.messages = name, provider, params, messages
        self.budget, self.speech, self.slots = budget, speech_options, slots

    async def arun(self, cancel: CancelToken, progress: Callable[[], None]) -> AsyncIterator[Chunk]:
        """The provider's stream as Chunks, holding one of its slots; closing it stops the upstream."""
        text: list[str] = []
        finish: str | None = None
        usage: Mapping[str, int] | None = None
        async with self.slots.held():
            upstream = _touching(self.provider.astream(self.messages, self.params, cancel), progress)
            pieces = speech.aspeak(upstream, self.budget, **self.speech)
            async with contextlib.aclosing(upstream), contextlib.aclosing(pieces):
                async for piece, emotion in pieces:
                    if cancel.cancelled:
                        raise CancelledError("generation cancelled")
                    if isinstance(piece, StreamEvent):
                        finish, usage = piece.finish_reason or finish, piece.usage or usage
                        if piece.tool_calls or piece.logprobs:
                            yield Chunk("", self.name, tool_calls=piece.tool_calls, logprobs=piece.logprobs)
                    else:
                        text.append(piece)
                        yield Chunk(piece, self.name, emotion)
            if cancel.cancelled:
                raise CancelledError("generation cancelled")
            if not usage:   # the upstream gave none: counted here, never above max_new_tokens
                prompt = self.provider.count_tokens(self.messages)
                said = self.provider.text_tokens("".join(text))
                said = min(said, self.params.max_new_tokens or said)
                usage = {"prompt_tokens": prompt, "completion_tokens": said, "total_tokens": prompt + said}
            yield Chunk("", self.name, finish_reason=finish or "stop", usage=usage)


class Slots:
    """A provider's generation slots (`max_concurrency`; None: no limit), shared by every event loop
    that uses the router: a waiter awaits a future of its own loop, handed a freed slot in turn."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.busy = 0       # generations holding or awaiting a slot: the load replicas are chosen by
        self._free = limit or 0
        self._lock = threading.Lock()
        self._waiters = collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]]()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """One slot while the block runs (cancelling the task gives up the wait)."""
        with self._lock:
            self.busy += 1
        try:
            async with self._one():
                yield
        finally:
            with self._lock:
                self.busy -= 1

    @contextlib.asynccontextmanager
    async def _one(self) -> AsyncIterator[None]:
        if self.limit is None:
            yield
            return
        loop, handed = asyncio.get_running_loop(), None
        with self._lock:
            if self._free > 0:
                self._free -= 1
            else:
                handed = loop.create_future()
                self._waiters.append((loop, handed))
        if handed is not None:
            try:
                await handed    # cancelled before a slot came: one handed later is passed on (`_hand`)
            except asyncio.CancelledError:
                if handed.done() and not handed.cancelled():
                    self._release()     # handed, then cancelled before it could run: give it back
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, handed = self._waiters.popleft()
                with contextlib.suppress(RuntimeError):     # its loop is closed: the next waiter
                    loop.call_soon_threadsafe(self._hand, handed)
                    return
            self._free += 1

    def _hand(self, handed: asyncio.Future) -> None:
        if handed.done():       # its waiter gave up: the slot goes on
            self._release()
        else:
            handed.set_result(None)
