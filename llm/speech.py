"""What makes the router an avatar's brain: the short-answer style, the character budget,
speech-clean text and a sentence splitter that works while the stream arrives.

Everything here is incremental and linear in the length of the reply: a stream is cleaned
and cut as it arrives, and text once released is never taken back.
"""

from __future__ import annotations

import re
from typing import Iterator

SENTENCE_ENDS = "。！？!?…"
CLAUSE_MARKS = "，、；：,;:"
CLOSERS = "”’\"'」』）)]》】"
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no",
                 "fig", "approx", "dept", "inc", "ltd", "co", "mt", "u.s", "u.k", "a.m", "p.m", "cf"}

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\U0001F1E6-\U0001F1FF\u2600-\u27BF\u2B00-\u2BFF"
                    "\u200d\ufe0e\ufe0f\u20e3\U000E0020-\U000E007F]")
_IMAGE = re.compile(r"!\[[^\]\n]*\]\([^)\n]*\)")
_LINK = re.compile(r"\[([^\]\n]*)\]\([^)\n]*\)")
_URL = re.compile(r"(?:https?://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+(?<![.,;:!?)\]'])")
_STARS = re.compile(r"(?<!\d)\*+|\*+(?!\d)")
_INLINE_MARKS = re.compile(r"`+|~~|__|</?[A-Za-z][^>\n]*>")
_SPACES = re.compile(r"[ \t\r\f\v\u3000\u00a0]+")
_CJK_GAP = re.compile(r"(?<=[\u3000-\u9fff\uff00-\uffef]) (?=[\u3000-\u9fff\uff00-\uffef])")
_LINE_PREFIX = re.compile(r"^\s*(?:(?:#{1,6}|>)\s*|(?:[-*+•]|\d{1,3}[.)、])\s+)*")
_MARKERS_ONLY = re.compile(r"^[\s#>*+•\-\d.)、_=`~|]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_URL_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%")
_HOLD_LIMIT = 300   # chars a possibly-unfinished link or URL may be held back before it is let through


def is_chinese(text: str) -> bool:
    """True when the text is mostly Chinese (CJK characters outnumber Latin words)."""
    cjk = len(_CJK.findall(text))
    return cjk > 0 and cjk >= len(_LATIN_WORD.findall(text))


def instruction(prompt: str, max_chars: int) -> str:
    """The short-answer instruction in the prompt's language."""
    if is_chinese(prompt):
        return f"请用少于{max_chars}个字回答以下问题"
    return f"Answer the following question in fewer than {max_chars} characters, in plain spoken words."


def clean_for_speech(text: str) -> str:
    """Markdown, emoji and URLs removed, whitespace normalised (no length limit)."""
    f = SpeechFilter(None)
    return f.feed(text) + f.finish()


def fit_to_budget(text: str, max_chars: int) -> str:
    """Speech-clean text cut to at most `max_chars` characters at the best boundary."""
    f = SpeechFilter(max_chars)
    return f.feed(text) + f.finish()


class SpeechFilter:
    """Turns a stream of raw deltas into speech-clean deltas; with `max_chars`, enforces the budget.

    Under a budget, text is released only up to the last sentence end (or, before any sentence end,
    up to the last clause mark), so the final cut never has to take back released text. `done`
    turns true once the budget is exceeded: the caller then stops the upstream generation.
    """

    def __init__(self, max_chars: int | None):
        self.max_chars = max_chars
        self.done = False
        self._cleaner = _Cleaner()
        self._text = ""
        self._released = 0
        self._scanned = 0
        self._last_sentence = 0     # index just after the last sentence end
        self._last_clause = -1      # index of the last clause mark (cut before it)

    def feed(self, delta: str) -> str:
        if self.done:
            return ""
        cleaned = self._cleaner.feed(delta)
        if self.max_chars is None:
            return cleaned
        self._text += cleaned
        self._scan(final=False)
        if len(self._text) > self.max_chars:
            self.done = True
            return self._release_cut()
        safe = self._last_sentence or max(self._last_clause, 0)
        return self._release(safe)

    def finish(self) -> str:
        """The rest, once the upstream stream has ended (or was stopped)."""
        if self.max_chars is None:
            return self._cleaner.finish()
        if self.done:
            return ""
        self.done = True
        self._text += self._cleaner.finish()
        self._scan(final=True)
        if len(self._text) > self.max_chars:
            return self._release_cut()
        return self._release(len(self._text)).rstrip()

    def _scan(self, final: bool) -> None:
        for pos, kind in _boundaries(self._text, self._scanned, final, self):
            if kind == "sentence":
                self._last_sentence = pos
            else:
                self._last_clause = pos

    def _release(self, upto: int) -> str:
        if upto <= self._released:
            return ""
        out = self._text[self._released:upto]
        self._released = upto
        return out

    def _release_cut(self) -> str:
        budget = self.max_chars
        sentence = max((p for p in _sentence_cuts(self._text[:budget + 1], budget)), default=0)
        if sentence:
            return self._release(sentence).rstrip()
        clause = max((p for p, k in _boundaries(self._text[:budget], 0, True) if k == "clause"), default=0)
        if clause > 0:
            head = self._text[:clause].rstrip()
            return self._release(len(head)) + ("。" if is_chinese(head) else ".")
        return self._release(_hard_cut(self._text, budget))


def _sentence_cuts(text: str, budget: int) -> Iterator[int]:
    for pos, kind in _boundaries(text, 0, True):
        if kind == "sentence" and pos <= budget:
            yield pos


def _hard_cut(text: str, budget: int) -> int:
    """`budget`, moved back to a word boundary when that cuts a Latin word in half."""
    if budget < len(text) and text[budget - 1:budget + 1].isascii() and text[budget - 1:budget + 1].isalnum():
        space = text.rfind(" ", 0, budget)
        if space > budget // 2:
            return space
    return budget


def _boundaries(text: str, start: int, final: bool, state: object | None = None
                ) -> Iterator[tuple[int, str]]:
    """Sentence ends (index after the end and its closing quotes) and clause marks (their index),
    from `start`. Stops before a char whose meaning needs the next char unless `final`;
    records the resume point on `state`."""
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if ch in SENTENCE_ENDS or ch == ".":
            j = i + 1
            while j < n and (text[j] in SENTENCE_ENDS or text[j] == "." or text[j] in CLOSERS):
                j += 1
            if j == n and not final:
                break
            if ch != "." or _is_full_stop(text, i, j):
                yield j, "sentence"
            i = j
            continue
        if ch in CLAUSE_MARKS:
            if i + 1 == n and not final:
                break
            if not (ch in ",:" and 0 < i and text[i - 1].isdigit() and i + 1 < n and text[i + 1].isdigit()):
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


class _Cleaner:
    """Incremental markdown/emoji/URL removal. Lines are decided when complete; inside a line,
    text is released as soon as no link or URL could still be open at its end."""

    def __init__(self) -> None:
        self.pending = ""
        self.line_start = True
        self.in_fence = False
        self.need_sep = False
        self.space = False
        self.last = ""

    def feed(self, delta: str) -> str:
        self.pending += delta
        out = []
        while (nl := self.pending.find("\n")) >= 0:
            line, self.pending = self.pending[:nl], self.pending[nl + 1:]
            out.append(self._line(line))
        out.append(self._partial())
        return "".join(out)

    def finish(self) -> str:
        line, self.pending = self.pending, ""
        return self._line(line) if line else ""

    def _line(self, line: str) -> str:
        if self.line_start:
            stripped = line.strip()
            if _FENCE.match(stripped):
                self.in_fence = not self.in_fence
                return self._end_line("")
            if self.in_fence or _TABLE_RULE.match(stripped) or _RULE.match(stripped):
                return self._end_line("")
            if stripped.startswith("|"):
                cells = [c.strip() for c in stripped.strip("|").split("|")]
                line = ("，" if is_chinese(stripped) else ", ").join(c for c in cells if c)
            line = _LINE_PREFIX.sub("", line)
        return self._end_line(self._emit(_inline(line)))

    def _end_line(self, text: str) -> str:
        self.line_start = True
        if self.last:
            self.need_sep = True
        return text

    def _partial(self) -> str:
        p = self.pending
        if not p or self.in_fence:
            return ""
        if self.line_start:
            s = p.lstrip()
            if s.startswith(("|", "```", "~~~")) or _MARKERS_ONLY.match(p):
                return ""                   # a table row, fence or list marker: wait for more
            p = _LINE_PREFIX.sub("", p)
            self.line_start = False
        cut = _safe_cut(p)
        self.pending = p[cut:]
        return self._emit(_inline(p[:cut]))

    def _emit(self, text: str) -> str:
        text = _CJK_GAP.sub("", _SPACES.sub(" ", text))
        core = text.strip()
        if not core:
            self.space = self.space or bool(text and self.last)
            return ""
        if self.need_sep:
            prefix = _separator(self.last, core[0])
        elif (self.space or text[0] == " ") and self.last and not (_cjkish(self.last) and _cjkish(core[0])):
            prefix = " "
        else:
            prefix = ""
        self.need_sep = False
        self.space = text[-1] == " "
        self.last = core[-1]
        return prefix + core


def _inline(text: str) -> str:
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _STARS.sub("", text)
    text = _INLINE_MARKS.sub("", text)
    return _EMOJI.sub("", text)


def _safe_cut(p: str) -> int:
    """How much of a partial line can be cleaned now: not an unfinished link, URL or '*'/'!' run."""
    cut = len(p)
    bracket = p.rfind("[")
    if bracket >= 0 and _open_link(p, bracket):
        cut = bracket - (1 if bracket > 0 and p[bracket - 1] == "!" else 0)
    k = cut
    while k > 0 and p[k - 1] in _URL_CHARS:
        k -= 1
    token = p[k:cut].lower()
    if token and (token.startswith(("http://", "https://", "www.")) or
                  "https://".startswith(token) or "www.".startswith(token)) and \
            (k == 0 or not p[k - 1].isalnum()):
        cut = k
    while cut > 0 and p[cut - 1] in "*!":
        cut -= 1
    return len(p) if cut == 0 and len(p) > _HOLD_LIMIT else cut


def _open_link(p: str, bracket: int) -> bool:
    close = p.find("]", bracket)
    if close < 0:
        return True
    if close == len(p) - 1:
        return True
    return p[close + 1] == "(" and p.find(")", close) < 0


def _cjkish(ch: str) -> bool:
    return bool(_CJK.match(ch)) or ch in SENTENCE_ENDS or ch in CLAUSE_MARKS or "\u3000" <= ch <= "\u303f"


def _separator(last: str, nxt: str) -> str:
    """What joins two lines for speech: nothing after punctuation, else a clause mark."""
    if last in SENTENCE_ENDS or last in CLAUSE_MARKS or last in "。，、；：" or last in CLOSERS:
        return "" if _cjkish(last) or _cjkish(nxt) else " "
    if last == ".":
        return " "
    return "，" if _cjkish(last) or _cjkish(nxt) else ", "


class SentenceSplitter:
    """Yields speakable sentences while the text arrives (Chinese and English punctuation,
    newlines); no split inside numbers like 3.14 or after common abbreviations."""

    def __init__(self) -> None:
        self._buf = ""
        self._scanned = 0

    def feed(self, text: str) -> list[str]:
        self._buf += text
        return self._take(final=False)

    def flush(self) -> list[str]:
        out = self._take(final=True)
        rest, self._buf, self._scanned = self._buf.strip(), "", 0
        return out + ([rest] if rest else [])

    def _take(self, final: bool) -> list[str]:
        out, start = [], 0
        for pos, kind in _boundaries(self._buf, self._scanned, final, self):
            if kind == "sentence":
                out.extend(self._pieces(self._buf[start:pos]))
                start = pos
        nl = self._buf.rfind("\n", start, self._scanned)
        if nl >= 0:
            out.extend(self._pieces(self._buf[start:nl]))
            start = nl + 1
        self._buf = self._buf[start:]
        self._scanned -= start
        return out

    @staticmethod
    def _pieces(text: str) -> list[str]:
        return [s.strip() for s in text.split("\n") if s.strip()]
