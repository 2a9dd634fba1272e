"""Emotion tags for the avatar's face: "[joy]今天天气真好！" -> the sentence, with emotion "joy".

A known tag becomes a private-use marker character, which passes the cleaning and the budget at no cost
and becomes `Chunk.emotion`; an unknown or malformed one is removed, never spoken."""

from __future__ import annotations

import re

from .sentences import _MARK, MARKS

DEFAULT_EMOTIONS = ("neutral", "joy", "sad", "angry", "surprise")
_BASE = ord(MARKS.split("-")[0])
_TAG = re.compile(r"[\[【]\s*([A-Za-z_]{1,16})\s*[\]】]")
_MAYBE_TAG = re.compile(r"[\[【]\s*[A-Za-z_]{0,16}\s*")         # could still become a tag
_BROKEN_TAG = re.compile(r"[\[【]\s*([A-Za-z_]{1,16})(?![A-Za-z_\]】])")   # "[joy" with no bracket
# A sentence end or a line break, and the spaces after it: a sentence starts where it ends.
_SENTENCE_END = re.compile(r"[。！？!?.\n][ \t]*")
_WORD = re.compile(r"[ \t]*([A-Za-z_]{1,16})")
_ALONE = re.compile(r"[ \t]*[.!。！]?[ \t]*")             # nothing after the word but an end mark
# What follows a bare tag and not a word of the sentence: "joy: …", "joy\n…", "joy 今天…"
_BARE_FOLLOWS = re.compile(r"([ \t]*[:：\n][ \t]*|[ \t]*(?=[\u3400-\u9fff]))")


def resting_emotion(names: tuple[str, ...]) -> str | None:
    """The face of a sentence with no tag: "neutral" when the set has it, else the set's first."""
    return "neutral" if "neutral" in names else (names[0] if names else None)


class EmotionTags:
    def __init__(self, names: tuple[str, ...] = DEFAULT_EMOTIONS):
        self.names = tuple(n.lower() for n in names)
        self._pending, self._at_start = "", True    # at start: the next text starts a sentence

    def marker(self, name: str) -> str:
        return chr(_BASE + self.names.index(name))

    def feed(self, delta: str, final: bool = False) -> str:
        text, held = self._bare_tags(self._pending + delta, final)
        out, pending = self._bracket_tags(text, final)
        self._pending = pending + held
        if out.strip(" \t"):
            self._at_start = out.rstrip(" \t")[-1] in "。！？!?.\n"
        return out

    def _bare_tags(self, text: str, final: bool) -> tuple[str, str]:
        """Tags without brackets ("joy 今天…", "neutral" alone, "sad: …") where a sentence starts and they
        cannot be a word of it ("Joy is…" stays) made markers; returns the text and the tail held back."""
        out, i = [], 0
        starts = ([0] if self._at_start else []) + [m.end() for m in _SENTENCE_END.finditer(text)]
        for start in starts:
            word = _WORD.match(text, start) if start >= i else None
            if word is None or not any(n.startswith(word[1].lower()) for n in self.names):
                continue
            name, rest = word[1].lower(), text[word.end():]
            follows = _BARE_FOLLOWS.match(rest) or (final and _ALONE.fullmatch(rest))
            # "neu", "joy" or "joy." at the end: wait and see; "joy:" at the end: its spaces may follow
            if not final and (_ALONE.fullmatch(rest) or (follows and follows.end() == len(rest))):
                return "".join(out) + text[i:start], text[start:]
            if name in self.names and follows:
                out.append(text[i:word.start(1)] + self.marker(name))   # spaces before: kept
                i = word.end() + len(follows[1] if follows.re is _BARE_FOLLOWS else rest)
        out.append(text[i:])
        return "".join(out), ""

    def _bracket_tags(self, text: str, final: bool) -> tuple[str, str]:
        out, i = [], 0
        while opener := _MAYBE_TAG.search(text, i):     # the next opener (the pattern matches it alone)
            k = opener.start()
            out.append(text[i:k])
            tag = _TAG.match(text, k)
            # "[x]" at the end: a "(" next would make it a markdown link; "[jo" at the end: wait for the rest
            if (tag.end() == len(text) and not final) if tag else _MAYBE_TAG.fullmatch(text, k):
                return "".join(out), text[k:]
            if tag and not text.startswith("(", tag.end()):      # [text](url): a link, for the cleaner
                name = tag[1].lower()
                out.append(self.marker(name) if name in self.names else "")   # unknown: removed
                i = tag.end()
            elif (broken := _BROKEN_TAG.match(text, k)) and broken[1].lower() in self.names:
                i = broken.end()                # "[joy 今天": a tag missing its bracket, removed
            else:
                out.append(text[k])
                i = k + 1
        out.append(text[i:])
        return "".join(out), ""

    def finish(self) -> str:
        rest, self._pending = self.feed("", final=True) + self._pending, ""
        return "" if _MAYBE_TAG.fullmatch(rest) and rest.strip("[【 ") else rest

    def split(self, text: str) -> list[tuple[str, str | None]]:
        """`text` as (piece, emotion starting there or None) pairs, markers removed."""
        out, emotion, start = [], None, 0
        for m in _MARK.finditer(text):
            if m.start() > start or (out == [] and m.start() > 0):
                out.append((text[start:m.start()], emotion))
            emotion = self.names[ord(m[0]) - _BASE] if ord(m[0]) - _BASE < len(self.names) else None
            start = m.end()
        if start < len(text) or emotion is not None:
            out.append((text[start:], emotion))
        return [(piece, e) for piece, e in out if piece or e]
