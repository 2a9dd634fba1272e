"""One reply stream through the speech stages, in order: reasoning out, emotion tags, clean and cut."""

from __future__ import annotations

from typing import AsyncIterator, Iterator

from ..types import StreamEvent
from .budget import Budget, SpeechFilter
from .clean import ReplyFilter
from .emotions import DEFAULT_EMOTIONS, EmotionTags

Piece = tuple["str | StreamEvent", "str | None"]


class Speaker:
    """The stages as one filter: `feed` each delta, then `finish`, for the (text, emotion) pieces ready.
    StreamEvents pass in place; a spent budget sets `done` and adds finish_reason "length". `verbatim`: the
    text as it came; else reasoning is dropped and, with a `budget`, the text cleaned and cut, [tag]s
    removed (reported as emotions when `emotions` names the set)."""

    def __init__(self, budget: Budget | None, *, emotions: tuple[str, ...] = (), lang: str = "zh",
                 verbatim: bool = False):
        self.verbatim, self.emotions, self.reply = verbatim, emotions, ReplyFilter()
        self.tags = EmotionTags(emotions or DEFAULT_EMOTIONS) if budget is not None else None
        self.speech = SpeechFilter(budget, lang=lang) if budget is not None else None
        self.pending: str | None = None      # an emotion whose text has not come yet
        self.done = False                    # the budget is spent: stop reading the upstream

    def feed(self, delta: str | StreamEvent) -> list[Piece]:
        if isinstance(delta, StreamEvent) or self.verbatim:
            return [(delta, None)] if delta else []
        out = self._pieces(self.reply.feed(delta), final=False)
        if self.speech and self.speech.done:
            self.done = True
            out.append((StreamEvent(finish_reason="length"), None))
        return out

    def finish(self) -> list[Piece]:
        return [] if self.verbatim or self.done else self._pieces(self.reply.finish(), final=True)

    def _pieces(self, text: str, final: bool) -> list[Piece]:
        for stage in (self.tags, self.speech) if self.tags else ():
            text = stage.feed(text) + (stage.finish() if final else "")
        out = []
        for piece, emotion in (self.tags.split(text) if self.tags else [(text, None)]):
            self.pending = (emotion if self.emotions else None) or self.pending
            if piece:
                out.append((piece, self.pending))
                self.pending = None
        return out


def speak(deltas: Iterator[str | StreamEvent], budget: Budget | None, **kw) -> Iterator[Piece]:
    """The reply as (text, emotion starting there) pieces (see `Speaker`; `kw` are its options).
    Ends as soon as the budget is spent: the caller then closes `deltas`, which stops the upstream."""
    speaker = Speaker(budget, **kw)
    for delta in deltas:
        yield from speaker.feed(delta)
        if speaker.done:
            return
    yield from speaker.finish()


async def aspeak(deltas: AsyncIterator[str | StreamEvent], budget: Budget | None,
                 **kw) -> AsyncIterator[Piece]:
    """`speak` for an async stream of deltas."""
    speaker = Speaker(budget, **kw)
    async for delta in deltas:
        for piece in speaker.feed(delta):
            yield piece
        if speaker.done:
            return
    for piece in speaker.finish():
        yield piece
