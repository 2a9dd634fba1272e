"""The answer budget in seconds of speech, the instruction asking for it, and the filter enforcing it."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from .clean import Cleaner
from .sentences import _CJK, _MARK, boundaries, is_chinese

ZH_CHARS_PER_S = 5.0        # a Mandarin TTS voice says about 4-5 characters a second
EN_WORDS_PER_S = 2.5        # about 150 words a minute
DEFAULT_MAX_SECONDS = 25 / ZH_CHARS_PER_S   # so Chinese keeps the classic "请用少于25个字回答以下问题"
FIRST_SENTENCE_OVERRUN = 1.5  # a first sentence may run to 1.5x the budget rather than be cut mid-phrase
MAX_SECONDS = 600.0         # the longest budget a config or a request may ask for
SECONDS_RULE = f"must be a number of seconds above 0 and at most {MAX_SECONDS:g}"
# Spoken length of digits and symbols, in Chinese characters and English words.
_DIGIT = {"zh": 1.2, "en": 0.8}                 # 2024 -> 二零二四 / twenty twenty-four
_SYMBOLS = {"%": (3, 1), "％": (3, 1), "℃": (3, 2), "°": (1, 1), "~": (1, 1), "+": (1, 1), "=": (2, 1)}
_EPS = 1e-9                 # costs are sums of floats: 25 x 0.2 must still fit in 5 s


@dataclass(frozen=True)
class Budget:
    """How long an answer may be: `seconds` of speech (digits and symbols counted as said), or exactly
    `chars` characters when set (the old character budget, every character counted)."""

    seconds: float = DEFAULT_MAX_SECONDS
    chars: int | None = None

    def instruction(self, prompt: str, emotions: tuple[str, ...] = ()) -> str:
        """The short-answer instruction in the prompt's language, naming the length in its units."""
        zh, words = is_chinese(prompt), max(1, int(self.seconds * EN_WORDS_PER_S))
        zh_chars = self.chars or max(1, round(self.seconds * ZH_CHARS_PER_S))
        length = f"fewer than {self.chars} characters" if self.chars else f"at most {words} words"
        rule = (f"请用少于{zh_chars}个字回答以下问题" if zh else
                f"Answer the following question in {length}, in plain spoken words.")
        if emotions:
            names, example = ("、" if zh else ", ").join(emotions), f"[{emotions[0]}]"
            rule += (f"。每句话以一个情绪标签开头，例如{example}，只能从这些中选：{names}" if zh else
                     f" Start each sentence with one emotion tag such as {example}, chosen from: {names}.")
        return rule


def valid_seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= MAX_SECONDS


def spoken_seconds(text: str, lang: str | None = None) -> float:
    """About how long `text` takes to say (digits and symbols as they are read)."""
    return _Meter(Budget(), lang or ("zh" if is_chinese(text) else "en")).extend(text).cum[-1]


class _Meter:
    """Cumulative spoken cost of a growing text, one entry per character (linear, incremental)."""

    def __init__(self, budget: Budget, lang: str):
        self.chars, self.cum, self.prev = budget.chars is not None, [0.0], " "
        self.lang = lang            # the script of the last letter seen: how digits are read

    def extend(self, text: str) -> _Meter:
        for ch in text:
            self.cum.append(self.cum[-1] + self._cost(ch))
            self.prev = ch
        return self

    def within(self, limit: float) -> int:
        """The longest prefix length whose cost is at most `limit`."""
        return bisect.bisect_right(self.cum, limit + _EPS) - 1

    def over(self, limit: float) -> bool:
        """Whether the text costs more than `limit`, by the measure of `within` (25 x 0.2 is not over 5)."""
        return self.cum[-1] > limit + _EPS

    def _cost(self, ch: str) -> float:
        if _MARK.match(ch):
            return 0.0
        if self.chars:
            return 1.0
        if _CJK.match(ch):
            self.lang = "zh"
            return 1 / ZH_CHARS_PER_S
        if ch.isdigit():
            return _DIGIT[self.lang] / (ZH_CHARS_PER_S if self.lang == "zh" else EN_WORDS_PER_S)
        if ch.isalpha():
            self.lang = "en"
            return 0.0 if self.prev.isalpha() or self.prev in "'’-" else 1 / EN_WORDS_PER_S   # a word's start
        if ch in _SYMBOLS:
            zh, en = _SYMBOLS[ch]
            return zh / ZH_CHARS_PER_S if self.lang == "zh" else en / EN_WORDS_PER_S
        return 0.0


def fit_to_budget(text: str, max_chars: int | None = None, *, max_seconds: float | None = None) -> str:
    """Speech-clean text cut to the budget at the best boundary."""
    budget = Budget(max_seconds or DEFAULT_MAX_SECONDS, max_chars)
    f = SpeechFilter(budget, lang="zh" if is_chinese(text) else "en")
    return f.feed(text) + f.finish()


class SpeechFilter:
    """Raw deltas in, speech-clean deltas out; a budget is enforced by releasing text only up to the last
    sentence end (before any, clause mark) and past the budget only at the cut, so nothing released is
    taken back. `done`: the budget is spent, the caller stops the upstream. `lang`: how digits are read."""

    def __init__(self, budget: Budget | int | None, lang: str = "zh"):
        self.budget = b = Budget(chars=budget) if isinstance(budget, int) else budget
        self.done, self._cleaner, self._text, self._released, self._scanned = False, Cleaner(), "", 0, 0
        self._meter = _Meter(b, lang) if b else None
        self._limit = b and (b.chars if b.chars is not None else b.seconds)
        self._last_sentence = 0     # index just after the last sentence end
        self._last_clause = -1      # index of the last clause mark (cut before it)

    def feed(self, delta: str) -> str:
        if self.done:
            return ""
        cleaned = self._cleaner.feed(delta)
        if self.budget is None:
            return cleaned
        self._add(cleaned, final=False)
        if not self._meter.over(self._limit):
            return self._release(self._last_sentence or max(self._last_clause, 0))
        # Past the budget with no sentence end yet, the first sentence may still end within the allowance.
        if self._last_sentence or self._meter.over(self._limit * FIRST_SENTENCE_OVERRUN):
            self.done = True
            return self._release_cut(ended=False)
        return ""       # the cut may yet fall at a clause within the budget: release no more

    def finish(self) -> str:
        """The rest, once the upstream stream has ended (or was stopped)."""
        if self.budget is None:
            return self._cleaner.finish()
        if self.done:
            return ""
        self.done = True
        self._add(self._cleaner.finish(), final=True)
        if self._meter.over(self._limit):
            return self._release_cut(ended=True)
        return self._release(len(self._text)).rstrip()

    def _add(self, text: str, final: bool) -> None:
        self._text += text
        self._meter.extend(text)
        for pos, kind in boundaries(self._text, self._scanned, final, self):
            setattr(self, f"_last_{kind}", pos)         # _last_sentence or _last_clause

    def _release(self, upto: int) -> str:
        out, self._released = self._text[self._released:upto], max(upto, self._released)
        return out

    def _release_cut(self, ended: bool) -> str:
        """The cut past the budget, by preference: a sentence end, a clause mark (each within the budget,
        else the allowance), before a phrase (English), at the budget; never before the released text."""
        text, limit = self._text, self._limit
        fits, room = self._meter.within(limit), self._meter.within(limit * FIRST_SENTENCE_OVERRUN)
        ends = list(boundaries(text[:room + 1], 0, ended))     # +1: the character that tells what a "." is
        sentences = [p for p, kind in ends if kind == "sentence"]
        if sentences:
            return self._release(([p for p in sentences if p <= fits] or sentences[:1])[-1]).rstrip()
        if ended and room == len(text):        # the stream ended the first sentence within the allowance
            return self._release(room).rstrip()
        clauses = [p for p, kind in ends if kind == "clause" and p]
        cut = ([p for p in clauses if p < fits] or clauses or [None])[-1]
        zh = is_chinese(text[:room])
        if cut is None and not zh:      # the last phrase-opening word that keeps enough before it
            starts = [m.start() for m in _PHRASE_START.finditer(text, 0, room)]
            cut = next((s for s in reversed(starts) if self._meter.cum[s] >= limit * _PHRASE_MIN_KEEP), None)
        if cut is None:     # at the budget, moved back to the start of a Latin word or number it splits
            cut = fits
            while 0 < cut < len(text) and (pair := text[cut - 1:cut + 1]).isascii() and pair.isalnum():
                cut -= 1
            cut = cut or fits
        head = _NO_END.sub("", text[:cut])
        return (self._release(len(head)) + ("。" if zh else ".")) if head else ""


# Words that open a phrase: cutting just before one leaves the phrase before it whole.
_PHRASE_START = re.compile(r"(?<![\w'’-])(?:%s)\b" % "|".join("""about across after against along among and
    around as at because before behind between beyond but by during for from if in into near of on onto or
    over since so than that then through to toward towards under until when where which while who whom whose
    with within without""".split()), re.IGNORECASE)
_PHRASE_MIN_KEEP = 0.5      # a phrase cut keeps at least half the budget: "The Great Wall." says nothing
_NO_END = re.compile(r"[\s\-–—(\[{“‘（《「『【]+$")     # white space and openers never end a reply

