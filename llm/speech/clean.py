"""Speech-clean text: markdown, emoji, URLs and control characters out, as the stream arrives;
and the reply filter every model's output passes: reasoning (<think>) never reaches the reply.
"""

from __future__ import annotations

import re

from .sentences import _CJK, CLAUSE_MARKS, CLOSERS, MARKS, SENTENCE_ENDS, is_chinese

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


_MARK = re.compile(f"[{MARKS}]")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200c\u2060\ufeff]")
_THINK_OPEN = re.compile(r"<(think|thinking|reasoning)>", re.I)
_THINK_CLOSE = re.compile(r"</(think|thinking|reasoning)>", re.I)
_TAG_NAMES = ("<think>", "<thinking>", "<reasoning>", "</think>", "</thinking>", "</reasoning>")


def clean_for_speech(text: str) -> str:
    """Markdown, emoji and URLs removed, whitespace normalised (no length limit)."""
    cleaner = Cleaner()
    return cleaner.feed(text) + cleaner.finish()


class ReplyFilter:
    """What every model's reply passes, styled or not: reasoning blocks (<think>...</think>, also one
    left open at the end) and control characters are dropped, and trailing white space is held back,
    so a reply never ends in it. Incremental: a tag split across deltas is held until it is whole."""

    def __init__(self) -> None:
        self._pending = ""
        self._thinking = False
        self._space = ""
        self._started = False

    def feed(self, delta: str) -> str:
        self._pending += delta
        out = []
        while True:
            match = (_THINK_CLOSE if self._thinking else _THINK_OPEN).search(self._pending)
            if match is None:
                break
            if not self._thinking:
                out.append(_THINK_CLOSE.sub("", self._pending[:match.start()]))   # an orphan close tag
            self._pending = self._pending[match.end():]
            self._thinking = not self._thinking
        hold = _partial_tag(self._pending)
        ready, self._pending = self._pending[:hold], self._pending[hold:]
        if not self._thinking:
            out.append(_THINK_CLOSE.sub("", ready))
        return self._visible("".join(out))

    def finish(self) -> str:
        rest, self._pending = ("" if self._thinking else self._pending), ""
        self._space = ""
        return self._visible(rest).rstrip()

    def _visible(self, text: str) -> str:
        text = _CONTROL.sub("", text.replace("\r\n", "\n"))
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        body = text.rstrip()
        if not body:
            self._space += text
            return ""
        out = self._space + body
        self._space = text[len(body):]
        return out


def _partial_tag(text: str) -> int:
    """Where a possibly unfinished reasoning tag starts at the end of `text` (len(text) if none)."""
    k = text.rfind("<", max(0, len(text) - 12))
    if k >= 0 and any(t.startswith(text[k:].lower()) for t in _TAG_NAMES):
        return k
    return len(text)


class Cleaner:
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
        self.last = _last_visible(core, self.last)
        return prefix + core


def _last_visible(text: str, default: str) -> str:
    stripped = _MARK.sub("", text)
    return stripped[-1] if stripped else default


def _inline(text: str) -> str:
    text = _CONTROL.sub("", text)
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
