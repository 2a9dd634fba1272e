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
# A sentence end or a line break, and the spaces after it: a sentence starts where it ends.
_SENTENCE_END = re.compile(r"[。！？!?.\n][ \t]*")
_ENDS_A_SENTENCE = re.compile(_SENTENCE_END.pattern + r"\Z")
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
        self._pending = ""
        self._at_start = True       # the text fed next starts a sentence (a bare tag may stand there)

    def marker(self, name: str) -> str:
        return chr(_BASE + self.names.index(name))

    def feed(self, delta: str, final: bool = False) -> str:
        text, self._pending = self._pending + delta, ""
        text, held = self._bare_tags(text, final)
        out = self._bracket_tags(text, final)
        self._pending += held
        if out.strip(" \t"):
            self._at_start = _ENDS_A_SENTENCE.search(out) is not None
        return out

    def _bare_tags(self, text: str, final: bool) -> tuple[str, str]:
        """A tag a model wrote without its brackets ("joy 今天…", "neutral" alone, "sad: …") where a
        sentence starts: made a marker, never spoken as the word. Only where it cannot be a word of the
        sentence (English "Joy is…" stays). Returns the text, and the tail held until it is decided."""
        out, i = [], 0
        starts = ([0] if self._at_start else []) + [m.end() for m in _SENTENCE_END.finditer(text)]
        for start in starts:
            if start < i:
                continue
            word = _WORD.match(text, start)
            if word is None or not (known := [n for n in self.names if n.startswith(word[1].lower())]):
                continue
            rest = text[word.end():]
            if not final and (_ALONE.fullmatch(rest) or word.end() == len(text)):
                out.append(text[i:start])
                return "".join(out), text[start:]       # "neu", "joy" or "joy." at the end: wait and see
            follows = _BARE_FOLLOWS.match(rest) or (final and _ALONE.fullmatch(rest))
            if follows and not final and follows.end() == len(rest):
                out.append(text[i:start])
                return "".join(out), text[start:]       # "joy:" at the end: its spaces may follow
            if word[1].lower() in known and follows:
                out.append(text[i:word.start(1)] + self.marker(word[1].lower()))   # spaces before: kept
                i = word.end() + len(follows[1] if follows.re is _BARE_FOLLOWS else rest)
        out.append(text[i:])
        return "".join(out), ""

    def _bracket_tags(self, text: str, final: bool) -> str:
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
