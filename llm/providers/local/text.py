"""Text in and out of local models, with no torch: prompts from templates, token ids to reply text."""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Sequence

from ...errors import CancelledError
from ...types import CancelToken, Message, StreamEvent, history_pairs

_PLACEHOLDER = re.compile(r"\{(system|history|prompt)\}")


class StopAt:
    """Ends a text stream before the first stop string, holding back enough to see one split across deltas."""

    def __init__(self, stops: Iterable[str] | None):
        self.stops = tuple(s for s in stops or () if s)
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.held, self.hit = "", False

    def feed(self, text: str) -> str:
        if self.hit:
            return ""
        self.held += text
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit, out, self.held = True, self.held[:cut], ""
            return out
        split = max(0, len(self.held) - self.keep)     # a short start is held whole
        out, self.held = self.held[:split], self.held[split:]
        return out

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class IncrementalDetokenizer:
    """Token ids in, text deltas out, decoding a short window (vLLM's and TGI's prefix/read offsets): emit
    decode([prefix:]) minus decode([prefix:read]) once whole; the prefix gives leading spaces context."""

    MAX_PENDING = 8     # a run of undecodable bytes longer than any UTF-8 char is emitted anyway

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.decode_calls = self.decoded_tokens = 0     # cost counters for tests and the bench

    def add(self, ids: Sequence[int]) -> str:
        """Take new token ids; return the text they complete (maybe empty)."""
        self.ids.extend(ids)
        return self._step(force=len(self.ids) - self.read_offset >= self.MAX_PENDING)

    def flush(self) -> str:
        """The text still held back at the end of the stream."""
        return self._step(force=True) if self.read_offset < len(self.ids) else ""

    def _step(self, force: bool) -> str:
        prefix_text = self._decode(self.prefix_offset, self.read_offset)
        text = self._decode(self.prefix_offset, len(self.ids))
        if force:   # no clean boundary: restart the window with no context
            self.prefix_offset = self.read_offset = len(self.ids)
            return text.removeprefix(prefix_text)
        if len(text) <= len(prefix_text) or text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix_text):]

    def _decode(self, start: int, end: int) -> str:
        if start >= end:
            return ""
        self.decode_calls += 1
        self.decoded_tokens += end - start
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)


def render_template(template: str, messages: list[Message]) -> str:
    """A base-model prompt: {system}, {history} as upstream Linly "User: ... Bot: ..." turns, {prompt}."""
    system = "\n".join(m.content for m in messages if m.role == "system")
    turns = [m for m in messages if m.role != "system"]
    prompt = turns.pop().content if turns and turns[-1].role == "user" else ""
    history = "".join(f" User: {user} Bot: {bot}" for user, bot in history_pairs(turns))
    values = {"system": system, "history": history, "prompt": prompt}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template).lstrip()


def reply(chunks: Iterable[Sequence[int]], tokenizer: Any, stop: StopAt, eos: set[int], max_new_tokens: int,
          cancel: CancelToken) -> Iterator[str | StreamEvent]:
    """Token id lists from an engine in, reply text out, cut before a `stop` string, then the finish reason
    ("length": max_new_tokens ran out). The caller closes `chunks` (stopping its engine) when this ends."""
    detokenizer = IncrementalDetokenizer(tokenizer)
    for ids in chunks:
        if cancel.cancelled:
            break
        text = stop.feed(detokenizer.add(ids))
        if text:
            yield text
        if stop.hit:
            yield StreamEvent(finish_reason="stop")
            return
    if cancel.cancelled:
        raise CancelledError("generation cancelled")
    rest = stop.feed(detokenizer.flush()) + stop.flush()
    if rest:
        yield rest
    ids = detokenizer.ids
    ran_out = len(ids) >= max_new_tokens and not (ids and ids[-1] in eos)
    yield StreamEvent(finish_reason="length" if ran_out else "stop")
