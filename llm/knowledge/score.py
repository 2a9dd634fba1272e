"""Scoring a search's candidates: how much of the question each covers (the score its thresholds judge),
BM25 for the order, an FAQ variant both ways, and the fusion with the nearest by meaning."""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass

from . import text as T
from .docs import Passage

K1, B, MIX = 1.2, 0.75, 0.3   # MIX: the cover's share of the rank (tuned on tests/knowledge/eval_dev.csv)
RRF_K = 60


@dataclass(frozen=True)
class Hit:
    passage: Passage
    kind: str               # "doc" or "faq"
    score: float            # 0..1: how much of the question the passage covers (FAQ: both ways)
    answer: str = ""        # an FAQ entry's answer
    entry: int = -1         # an FAQ entry's number (its variants share it)
    rank_score: float = 0.0  # what orders the hits: the cover, and BM25 (term counts, passage length)
    similarity: float | None = None    # the cosine to the question, with an embedding model
    id: int = 0


def rank(question: str, asked: list[T.Slot], variants: dict[str, list[T.Slot]], rows: list[tuple],
         near: dict[int, float], idf: dict[str, float], avg: float) -> list[Hit]:
    """The candidate `rows` (id, source, kind, title, text, answer, entry, terms) as Hits, best first.
    `variants`: each FAQ row's slots; `near`: passage id -> cosine, nearest first ({} without a model)."""
    weights = [slot.weight * max(_alt_idf(alt, idf) for alt in slot.alternatives) for slot in asked]
    total = sum(weights) or 1.0
    have_question = set(T.terms(question))
    hits = []
    for order, (pid, source, kind, title, body, answer, entry, terms) in enumerate(rows):
        listed = terms.split()
        have = collections.Counter(listed)
        found = [slot.found_in(have) for slot in asked]
        covered = sum(w * f for w, f in zip(weights, found, strict=True)) / total
        norm = K1 * (1 - B + B * len(listed) / avg)
        bm25 = sum(w * f * (tf := _tf(slot, have)) * (K1 + 1) / (tf + norm) for slot, w, f
                   in zip(asked, weights, found, strict=True) if f) / (total * (K1 + 1))
        if kind == "faq":
            covered = _both_ways(covered, variants[body], have_question, idf)
        score = MIX * covered + (1 - MIX) * bm25 - order * 1e-6
        hits.append(Hit(Passage(source, title, body), kind, round(covered, 4), answer, entry, score,
                        round(near[pid], 4) if pid in near else None, pid))
    if near:    # reciprocal rank fusion, each ranking's vote weighed by its own score (cover, cosine):
        # a passage that only shares a "where" with the question does not outvote one that means it
        lexical = {h.id: i for i, h in enumerate(sorted(hits, key=lambda h: -h.rank_score))}
        dense = {pid: i for i, pid in enumerate(near)}
        fused = {h.id: h.score / (RRF_K + lexical[h.id])
                 + (max(near[h.id], 0.0) / (RRF_K + dense[h.id]) if h.id in dense else 0.0) for h in hits}
        hits = [dataclasses.replace(h, rank_score=fused[h.id]) for h in hits]
    return sorted(hits, key=lambda h: -h.rank_score)


def _tf(slot: T.Slot, have: collections.Counter) -> int:
    counts = [min(have[t] for t in alt) for alt in slot.alternatives] + [have[t] for t in slot.related]
    return max(counts)


def _alt_idf(alt: T.Terms, idf: dict[str, float]) -> float:
    return max(idf[t] for t in alt)


def _both_ways(covered: float, theirs: list[T.Slot], have: set[str], idf: dict[str, float]) -> float:
    """An FAQ variant's score: the harmonic mean of how much of the question it covers and how much of it
    the question covers (a long question that merely contains the variant's words is not the variant)."""
    weights = [s.weight * max(_alt_idf(alt, idf) for alt in s.alternatives) for s in theirs]
    total = sum(weights)
    back = sum(w * s.found_in(have) for s, w in zip(theirs, weights, strict=True)) / total if total else 0.0
    return 2 * covered * back / (covered + back) if covered + back else 0.0
