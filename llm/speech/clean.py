"""Speech-clean text (no markdown, emoji, URLs) as the stream arrives, and the reply filter (no <think>)."""

from __future__ import annotations

import re

from .sentences import _CJK, _MARK, CLAUSE_MARKS, CLOSERS, SENTENCE_ENDS, is_chinese

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
_RULE = re.compile(r"^\s*(?:([-*_])(?:\s*\1){2,}|\|?\s*:?-{2,}:?\s*(?:\|\s*:?-{2,}:?\s*)*\|?)\s*$")
_URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%"
_HOLD_LIMIT = 300   # chars a possibly-unfinished link or URL may be held back before it is let through
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200c\u2060\ufeff]")
_THINK_OPEN = re.compile(r"<(think|thinking|reasoning)>", re.I)
_THINK_CLOSE = re.compile(r"</(think|thinking|reasoning)>", re.I)
_TAG_NAMES = ("<think>", "<thinking>", "<reasoning>", "</think>", "</thinking>", "</reasoning>")


def clean_for_speech(text: str) -> str:
    """Markdown, emoji and URLs removed, whitespace normalised (no length limit)."""
    return (cleaner := Cleaner()).feed(text) + cleaner.finish()


class ReplyFilter:
    """What every reply passes: reasoning blocks (<think>...</think>, or left open) and control characters
    dropped; a tag split across deltas, and trailing white space (a reply never ends in it), held back."""

    def __init__(self) -> None:
        self._pending, self._space = "", ""         # held: a possible tag; trailing white space
        self._thinking = self._started = False

    def feed(self, delta: str) -> str:
        self._pending += delta
        out = []
        while match := (_THINK_CLOSE if self._thinking else _THINK_OPEN).search(self._pending):
            if not self._thinking:
                out.append(_THINK_CLOSE.sub("", self._pending[:match.start()]))   # an orphan close tag
            self._pending = self._pending[match.end():]
            self._thinking = not self._thinking
        k = (p := self._pending).rfind("<", max(0, len(p) - 12))     # a possibly unfinished tag: held
        hold = k if k >= 0 and any(t.startswith(p[k:].lower()) for t in _TAG_NAMES) else len(p)
        ready, self._pending = p[:hold], p[hold:]
        if not self._thinking:
            out.append(_THINK_CLOSE.sub("", ready))
        return self._visible("".join(out))

    def finish(self) -> str:
        rest, self._pending, self._space = ("" if self._thinking else self._pending), "", ""
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
        out, self._space = self._space + body, text[len(body):]
        return out


class Cleaner:
    """Incremental markdown/emoji/URL removal. Lines are decided when complete; inside a line,
    text is released as soon as no link or URL could still be open at its end."""

    def __init__(self) -> None:
        self.pending, self.last = "", ""      # the last visible character: how the next text joins it
        self.line_start, self.in_fence, self.need_sep, self.space = True, False, False, False

    def feed(self, delta: str) -> str:
        *lines, self.pending = (self.pending + delta).split("\n")
        return "".join(map(self._line, lines)) + self._partial()

    def finish(self) -> str:
        line, self.pending = self.pending, ""
        return self._line(line) if line else ""

    def _line(self, line: str) -> str:
        text, stripped = "", line.strip()
        if not self.line_start:         # the line's start is out already (see _partial)
            text = self._emit(_inline(line))
        elif _FENCE.match(stripped):
            self.in_fence = not self.in_fence
        elif not (self.in_fence or _RULE.match(stripped)):
            if stripped.startswith("|"):
                cells = [c.strip() for c in stripped.strip("|").split("|")]
                line = ("，" if is_chinese(stripped) else ", ").join(c for c in cells if c)
            text = self._emit(_inline(_LINE_PREFIX.sub("", line)))
        self.line_start, self.need_sep = True, self.need_sep or bool(self.last)
        return text

    def _partial(self) -> str:
        p = self.pending
        if not p or self.in_fence:
            return ""
        if self.line_start:
            if p.lstrip().startswith(("|", "```", "~~~")) or _MARKERS_ONLY.match(p):
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
        gap = (self.space or text[0] == " ") and self.last and not (_cjkish(self.last) and _cjkish(core[0]))
        prefix = " " if gap else ""
        if self.need_sep:   # two lines joined for speech: nothing after punctuation, else a clause mark
            cjk = _cjkish(self.last) or _cjkish(core[0])
            if self.last in SENTENCE_ENDS + CLAUSE_MARKS + CLOSERS:
                prefix = "" if cjk else " "
            else:
                prefix = " " if self.last == "." else ("，" if cjk else ", ")
        self.need_sep, self.space = False, text[-1] == " "
        self.last = _MARK.sub("", core)[-1:] or self.last
        return prefix + core


def _inline(text: str) -> str:
    for pattern, repl in ((_CONTROL, ""), (_IMAGE, ""), (_LINK, r"\1"), (_URL, ""), (_STARS, ""),
                          (_INLINE_MARKS, ""), (_EMOJI, "")):
        text = pattern.sub(repl, text)
    return text


def _safe_cut(p: str) -> int:
    """How much of a partial line can be cleaned now: not an unfinished link, URL or '*'/'!' run."""
    cut, bracket = len(p), p.rfind("[")
    close = p.find("]", bracket)
    if bracket >= 0 and (close in (-1, len(p) - 1) or (p[close + 1] == "(" and p.find(")", close) < 0)):
        cut = bracket - (p[bracket - 1:bracket] == "!")
    k = len(p[:cut].rstrip(_URL_CHARS))
    token = p[k:cut].lower()
    if token and not p[k - 1:k].isalnum() and (token.startswith(("http://", "https://", "www.")) or
                                               "https://".startswith(token) or "www.".startswith(token)):
        cut = k
    cut = len(p[:cut].rstrip("*!"))
    return len(p) if cut == 0 and len(p) > _HOLD_LIMIT else cut


def _cjkish(ch: str) -> bool:
    return bool(_CJK.match(ch)) or ch in SENTENCE_ENDS + CLAUSE_MARKS or "\u3000" <= ch <= "\u303f"
