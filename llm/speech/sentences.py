"""Sentence boundaries while the text arrives, and the splitter that yields speakable sentences.

A sentence ends at 。！？!?… at once (a closer after it is dropped from the next piece); only "." is
ambiguous (3.14, e.g., Dr. Smith) and waits for the character after it."""

from __future__ import annotations

import re
from typing import Iterator

SENTENCE_ENDS = "。！？!?…"
CLAUSE_MARKS = "，、；：,;:"
CLOSERS = "”’\"'」』）)]》】"
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no",
                 "fig", "approx", "dept", "inc", "ltd", "co", "mt", "u.s", "u.k", "a.m", "p.m", "cf"}
MARKS = "\ue000-\ue0ff"   # private-use characters that carry emotion tags through the pipeline

_MARK = re.compile(f"[{MARKS}]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_LEADING = re.compile(rf"^[\s{re.escape(CLOSERS + SENTENCE_ENDS)}.]+")
_STOPS = SENTENCE_ENDS + "."


def is_chinese(text: str) -> bool:
    """True when the text is mostly Chinese (CJK characters outnumber Latin words)."""
    cjk = len(_CJK.findall(text))
    return cjk > 0 and cjk >= len(_LATIN_WORD.findall(text))


def boundaries(text: str, start: int, final: bool, state: object | None = None) -> Iterator[tuple[int, str]]:
    """Sentence ends (after closers already there) and clause marks, from `start`; stops before a final
    '.' (or ',' ':' after a digit) unless `final`: the next char tells. The resume point goes on `state`."""
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if ch in _STOPS:
            j = i + 1
            while j < n and (text[j] in _STOPS or text[j] in CLOSERS):
                j += 1
            if ch == "." and j == n and not final:
                break
            if ch != "." or _is_full_stop(text, i, j):
                yield j, "sentence"
            i = j - 1
        elif ch in CLAUSE_MARKS:
            number = ch in ",:" and i > 0 and text[i - 1].isdigit()     # 3,000 and 3:30 are not clauses
            if number and i + 1 == n and not final:
                break
            if not (number and i + 1 < n and text[i + 1].isdigit()):
                yield i, "clause"
        i += 1
    if state is not None:
        state._scanned = i


def _is_full_stop(text: str, dot: int, after: int) -> bool:
    """Whether the '.' at `dot` (its run ending at `after`) ends a sentence."""
    if after < len(text) and not (text[after].isspace() or _CJK.match(text[after])):
        return False                       # 3.14, e.g, example.com
    k = dot
    while k > 0 and not text[k - 1].isspace():
        k -= 1
    word = text[k:dot].lower().lstrip("(\"'“")
    if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False                       # Dr. Smith, J. K. Rowling
    return not (word.isdigit() and len(word) <= 2 and (k == 0 or text[k - 1] == "\n"))  # "1. " list item


class SentenceSplitter:
    """Speakable sentences while the text arrives. `feed_tagged` also takes the emotion starting at the
    fed text (`Chunk.emotion`); each sentence gets the one in force where it starts."""

    def __init__(self) -> None:
        self._buf, self._scanned = "", 0
        self._marks: list[tuple[int, str]] = []    # (offset in _buf, emotion) not yet placed
        self.emotion: str | None = None

    def feed(self, text: str) -> list[str]:
        return [s for s, _ in self.feed_tagged(text)]

    def flush(self) -> list[str]:
        return [s for s, _ in self.flush_tagged()]

    def feed_tagged(self, text: str, emotion: str | None = None) -> list[tuple[str, str | None]]:
        if emotion:
            self._marks.append((len(self._buf), emotion))
        self._buf += text
        return self._take(final=False)

    def flush_tagged(self) -> list[tuple[str, str | None]]:
        out = self._take(final=True) + self._pieces(self._buf, 0)
        self._buf, self._scanned, self._marks = "", 0, []
        return out

    def _take(self, final: bool) -> list[tuple[str, str | None]]:
        cuts = [pos for pos, kind in boundaries(self._buf, self._scanned, final, self) if kind == "sentence"]
        last = cuts[-1] if cuts else 0
        cuts.append(self._buf.rfind("\n", last, self._scanned) + 1 or last)    # through the last whole line
        out, start = [], 0
        for cut in cuts:
            out.extend(self._pieces(self._buf[:cut], start))
            start = cut
        self._buf = self._buf[start:]
        self._scanned -= start
        self._marks = [(at - start, e) for at, e in self._marks]
        return out

    def _pieces(self, buf: str, start: int) -> list[tuple[str, str | None]]:
        out = []
        while start < len(buf):
            end = nl if (nl := buf.find("\n", start)) >= 0 else len(buf)
            first = lead.end() if (lead := _LEADING.match(buf, start)) else start     # where the words begin
            if first < end:
                while self._marks and self._marks[0][0] <= first:   # emotions marked up to here apply
                    self.emotion = self._marks.pop(0)[1]
                out.append((buf[first:end].strip(), self.emotion))
            start = end + 1
        return out
