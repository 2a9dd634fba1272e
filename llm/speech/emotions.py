"""Emotion tags for the avatar's face: "[joy]今天天气真好！" -> the sentence, with emotion "joy".

The model is asked to start each sentence with a tag from a fixed set. `EmotionTags` turns each
known tag into one private-use marker character, which passes the cleaning and the budget (at no
cost) and is turned into `Chunk.emotion` by the router; unknown or malformed tags are removed,
never spoken. Incremental: a tag split across deltas is held until it is decided.
"""

from __future__ import annotations

import re

from .sentences import MARKS

DEFAULT_EMOTIONS = ("neutral", "joy", "sad", "angry", "surprise")
_BASE = ord(MARKS.split("-")[0])
_TAG = re.compile(r"[\[【]\s*([A-Za-z_]{1,16})\s*[\]】]")
_MAYBE_TAG = re.compile(r"[\[【]\s*[A-Za-z_]{0,16}\s*")         # could still become a tag
_BROKEN_TAG = re.compile(r"[\[【]\s*([A-Za-z_]{1,16})(?![A-Za-z_\]】])")   # "[joy" with no bracket
_MARK = re.compile(f"[{MARKS}]")


class EmotionTags:
    def __init__(self, names: tuple[str, ...] = DEFAULT_EMOTIONS):
        self.names = tuple(n.lower() for n in names)
        self._pending = ""

    def marker(self, name: str) -> str:
        return chr(_BASE + self.names.index(name))

    def feed(self, delta: str, final: bool = False) -> str:
        text, self._pending = self._pending + delta, ""
        out, i = [], 0
        while True:
            k = min((p for p in (text.find("[", i), text.find("【", i)) if p >= 0), default=-1)
            if k < 0:
                out.append(text[i:])
                break
            out.append(text[i:k])
            tag = _TAG.match(text, k)
            if tag and tag.end() == len(text) and not final:
                self._pending = text[k:]        # "[x]" then "(" would make it a markdown link
                break
            if tag and text.startswith("(", tag.end()):
                tag = None                      # [text](url): a link, for the cleaner
            if tag:
                name = tag[1].lower()
                out.append(self.marker(name) if name in self.names else "")   # unknown: removed
                i = tag.end()
                continue
            if _MAYBE_TAG.fullmatch(text, k):
                self._pending = text[k:]        # "[jo" at the end: wait for the rest
                break
            broken = _BROKEN_TAG.match(text, k)
            if broken and broken[1].lower() in self.names:
                i = broken.end()                # "[joy 今天": a tag missing its bracket, removed
                continue
            out.append(text[k])
            i = k + 1
        return "".join(out)

    def finish(self) -> str:
        rest = self.feed("", final=True)
        rest, self._pending = rest + self._pending, ""
        return "" if _MAYBE_TAG.fullmatch(rest) and rest.strip("[【 ") else rest

    def split(self, text: str) -> list[tuple[str, str | None]]:
        """`text` as (piece, emotion starting there or None) pairs, markers removed."""
        out: list[tuple[str, str | None]] = []
        emotion, start = None, 0
        for m in _MARK.finditer(text):
            if m.start() > start or (out == [] and m.start() > 0):
                out.append((text[start:m.start()], emotion))
            emotion = self.names[ord(m[0]) - _BASE] if ord(m[0]) - _BASE < len(self.names) else None
            start = m.end()
        if start < len(text) or emotion is not None:
            out.append((text[start:], emotion))
        return [(piece, e) for piece, e in out if piece or e]
