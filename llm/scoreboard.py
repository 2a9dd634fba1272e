"""The speech-fitness scoreboard: how fit each provider's replies are for an avatar to say."""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, field
from itertools import product

from . import speech
from .errors import LLMError
from .router import Router

PROMPTS = (
    "你好，请介绍一下你自己。", "如何应对压力？", "北京有哪些好玩的地方？", "为什么天空是蓝色的？",
    "推荐一本适合初学者的编程书。", "今天晚饭吃什么好？", "怎样才能睡个好觉？", "长城有多长？",
    "给我讲一个简短的笑话。", "学习英语有什么好方法？",
    "How do I handle stress?", "What can a digital human do?", "Tell me a fun fact about the moon.",
    "Why is the sky blue?", "How long is the Great Wall of China?", "What should I cook for dinner tonight?",
    "Give me one tip for learning Chinese.", "What is the capital of Australia?",
    "How do I fall asleep faster?", "Recommend a book for a beginner programmer.",
)
LEAKS = {
    "markdown": re.compile(r"[#*`|]|^\s*[-+>]\s|\]\(", re.M),
    "emoji": re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF]"),
    "url": re.compile(r"https?://|www\.", re.I),
    "reasoning": re.compile(r"</?think|</?reasoning", re.I),
}


@dataclass
class Score:
    provider: str
    within: int = 0
    sentence_end: int = 0
    leaks: dict[str, int] = field(default_factory=dict)
    ttft_ms: list[float] = field(default_factory=list)    # one per reply
    first_sentence_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run(router: Router, names: list[str] | None = None, prompts: tuple[str, ...] = PROMPTS) -> list[Score]:
    """Score each named provider (default: every ready one that is not Direct Reply)."""
    names = names or [n for n in router.names()
                      if router.status(n).ready and not router.provider(n).verbatim]
    scores = [Score(name) for name in names]
    for score, prompt in product(scores, prompts):
        req = router.request(prompt, provider=score.provider, style=True)
        start, ttft, first_sentence, parts = time.perf_counter(), None, None, []
        splitter = speech.SentenceSplitter()
        try:
            for chunk in router.stream(req):
                if chunk.provider != score.provider:
                    raise LLMError(f"{score.provider} failed; {chunk.provider} (its fallback) answered")
                ttft = ttft if ttft is not None else time.perf_counter() - start
                parts.append(chunk.text)
                if first_sentence is None and splitter.feed(chunk.text):
                    first_sentence = time.perf_counter() - start
        except LLMError as e:
            score.errors.append(f"{prompt[:20]}: {e.message}")
            continue
        reply, budget = "".join(parts), req.budget
        first_sentence = first_sentence if first_sentence is not None else time.perf_counter() - start
        score.within += (len(reply) <= budget.chars if budget.chars is not None
                         else speech.spoken_seconds(reply) <= budget.seconds + 1e-6)
        score.sentence_end += reply.rstrip()[-1:] in speech.SENTENCE_ENDS + "."
        for kind, pattern in LEAKS.items():
            score.leaks[kind] = score.leaks.get(kind, 0) + bool(pattern.search(reply))
        score.ttft_ms.append((ttft or 0) * 1000)
        score.first_sentence_ms.append(first_sentence * 1000)
    return scores


def table(scores: list[Score]) -> str:
    """The scoreboard as aligned text, one provider a row."""
    rows = [("provider", "replies", "in budget", "sentence end", "leaks", "TTFT p50/p95 ms",
             "1st sentence p50/p95 ms", "errors")]
    for s in scores:
        n = max(len(s.ttft_ms), 1)
        kinds = ", ".join(f"{k} {v}" for k, v in s.leaks.items() if v)
        rows.append((s.provider, str(len(s.ttft_ms)), f"{s.within / n:.0%}", f"{s.sentence_end / n:.0%}",
                     f"{sum(s.leaks.values()) / n:.0%}" + (f" ({kinds})" if kinds else ""),
                     _p50_p95(s.ttft_ms), _p50_p95(s.first_sentence_ms), str(len(s.errors))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += [f"{s.provider} error: {e}" for s in scores for e in s.errors[:3]]
    return "\n".join(lines)


def _p50_p95(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.0f}/{p95:.0f}"
