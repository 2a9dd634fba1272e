"""One reply stream through the speech stages, in order: reasoning out, emotion tags, clean and cut."""

from __future__ import annotations

from typing import Iterator

from ..types import StreamEvent
from .budget import Budget, SpeechFilter
from .clean import ReplyFilter
from .emotions import DEFAULT_EMOTIONS, EmotionTags


def speak(deltas: Iterator[str | StreamEvent], budget: Budget | None, *, emotions: tuple[str, ...] = (),
          lang: str = "zh", verbatim: bool = False) -> Iterator[tuple[str | StreamEvent, str | None]]:
    """The reply as (text, emotion starting there) pieces.

    StreamEvents (tool calls, finish reason, usage) pass through untouched, in place; when the budget
    ends the reply, a last StreamEvent says finish_reason "length".

    `verbatim`: the text as it came (Direct Reply). Otherwise reasoning and control characters are
    always dropped; with a `budget` (the speech style) the text is also cleaned for speech and cut
    to the budget, and emotion [tag]s are removed, and reported as emotions when `emotions` names
    the set the model was asked for. Ends as soon as the budget is spent: the caller then closes
    `deltas`, which stops the upstream generation."""
    if verbatim:
        for text in deltas:
            if text:
                yield text, None
        return
    reply = ReplyFilter()
    tags = EmotionTags(emotions or DEFAULT_EMOTIONS) if budget is not None else None
    speaker = SpeechFilter(budget, lang=lang) if budget is not None else None
    pending: str | None = None      # an emotion whose text has not come yet

    def pieces(text: str) -> Iterator[tuple[str, str | None]]:
        nonlocal pending
        for piece, emotion in (tags.split(text) if tags else [(text, None)]):
            pending = (emotion if emotions else None) or pending
            if piece:
                yield piece, pending
                pending = None

    for delta in deltas:
        if isinstance(delta, StreamEvent):
            yield delta, None
            continue
        text = reply.feed(delta)
        if tags:
            text = tags.feed(text)
        if speaker:
            text = speaker.feed(text)
        yield from pieces(text)
        if speaker and speaker.done:
            yield StreamEvent(finish_reason="length"), None
            return
    text = reply.finish()
    if tags:
        text = tags.feed(text) + tags.finish()
    if speaker:
        text = speaker.feed(text) + speaker.finish()
    yield from pieces(text)
