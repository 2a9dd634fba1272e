"""`python -m llm kb eval FILE.csv`: how well the knowledge finds what a set of questions needs.

The file's columns: question, kind (doc | faq | miss), source (a document's path, or the FAQ entry's first
question), answer (for doc: words of the passage that answers it). Retrieval is measured without the
thresholds (top-1/top-3), the decisions with them (FAQ answers given, misses recognised), and `sweep`
shows what other thresholds would decide, to calibrate them on your own questions."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import decide
from .docs import decode
from .score import Hit

KINDS = ("doc", "faq", "miss")


@dataclass(frozen=True)
class Case:
    question: str
    kind: str
    source: str = ""
    answer: str = ""


def read_cases(path: Path) -> list[Case]:
    """The rows of an evaluation file; ValueError naming the first bad row."""
    rows = list(csv.DictReader(io.StringIO(decode(path.read_bytes()))))
    if not rows or "question" not in rows[0] or "kind" not in rows[0]:
        raise ValueError(f"{path}: needs a header row: question,kind,source,answer")
    cases = []
    for i, row in enumerate(rows, start=2):
        kind = (row.get("kind") or "").strip()
        if kind not in KINDS or not (row.get("question") or "").strip():
            raise ValueError(f"{path} line {i}: needs a question and a kind of {', '.join(KINDS)}")
        if kind != "miss" and not (row.get("source") or "").strip():
            raise ValueError(f"{path} line {i}: a {kind} question needs its source")
        cases.append(Case(row["question"].strip(), kind, (row.get("source") or "").strip(),
                          (row.get("answer") or "").strip()))
    return cases


@dataclass
class Outcome:
    case: Case
    hits: list[Hit]

    def rank(self) -> int | None:
        """Where the passage that answers a doc question is (0 = first), None when it is not there."""
        for i, hit in enumerate(self.hits):
            if hit.kind == "doc" and hit.passage.source == self.case.source and \
                    self.case.answer in hit.passage.text:
                return i
        return None


@dataclass
class Report:
    outcomes: list[Outcome]
    faq_firsts: dict[str, str] = field(default_factory=dict)   # an FAQ question variant -> its entry's first

    def of(self, kind: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.case.kind == kind]

    @property
    def by_meaning(self) -> bool:
        return any(h.similarity is not None for o in self.outcomes for h in o.hits)

    def figures(self, cfg) -> dict[str, float]:
        """The retrieval (top-1, top-3) and the decisions `cfg`'s thresholds make (knowledge.decide)."""
        docs, faqs, misses = self.of("doc"), self.of("faq"), self.of("miss")
        ranks = [o.rank() for o in docs]
        right = wrong = grounded = recognised = 0
        for o in self.outcomes:
            faq, good = decide(o.hits, cfg)
            if o.case.kind == "doc":
                grounded += faq is None and any(h.passage.source == o.case.source and o.case.answer in
                                                h.passage.text for h in good)
            elif faq is not None and o.case.kind == "faq" and \
                    self.faq_firsts.get(faq.passage.text) == o.case.source:
                right += 1
            elif faq is not None:
                wrong += 1
            elif o.case.kind == "miss" and not good:
                recognised += 1
        return {
            "doc_top1": _share(sum(r == 0 for r in ranks), len(docs)),
            "doc_top3": _share(sum(r is not None and r < 3 for r in ranks), len(docs)),
            "doc_grounded": _share(grounded, len(docs)),
            "faq_right": _share(right, len(faqs)),
            "faq_wrong": _share(wrong, len(faqs) + len(misses)),
            "miss_recognised": _share(recognised, len(misses)),
        }


def _share(n: int, of: int) -> float:
    return n / of if of else 0.0


def run(knowledge, cases: list[Case]) -> Report:
    knowledge.refresh(force=True)
    firsts = knowledge.index.faq_firsts()
    return Report([Outcome(c, knowledge.search(c.question, limit=10)) for c in cases], firsts)


LABELS = {"doc_top1": "document questions, right passage first", "doc_top3": "... in the top 3",
          "doc_grounded": "... in the top 3 and over doc_threshold (the model gets it)",
          "faq_right": "FAQ paraphrases given the right fixed answer",
          "faq_wrong": "FAQ and off-topic questions given a wrong fixed answer",
          "miss_recognised": "off-topic questions recognised as misses"}


def table(report: Report, cfg) -> str:
    figures = report.figures(cfg)
    counts = {k: len(report.of(k)) for k in KINDS}
    meaning = f", faq_similarity {cfg.faq_similarity}, doc_similarity {cfg.doc_similarity}" \
        if report.by_meaning else ""
    lines = [f"{counts['doc']} document, {counts['faq']} FAQ and {counts['miss']} off-topic questions; "
             f"faq_threshold {cfg.faq_threshold}, doc_threshold {cfg.doc_threshold}{meaning}"]
    lines += [f"  {figures[k] * 100:5.1f}%  {label}" for k, label in LABELS.items()]
    return "\n".join(lines)


def sweep(report: Report, cfg) -> str:
    """What other thresholds would decide: the cover thresholds, and with an embedding model the
    cosines too (each grid with the other pair as configured)."""
    grids = [("faq_threshold", "doc_threshold", (0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8),
              (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6))]
    if report.by_meaning:
        grids.append(("faq_similarity", "doc_similarity", (0.75, 0.8, 0.85, 0.9, 0.95),
                      (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)))
    lines = []
    for faq_key, doc_key, faq_values, doc_values in grids:
        lines.append(f"{faq_key:>14} {doc_key:>14}  faq_right faq_wrong miss_recog doc_grounded")
        for faq_value in faq_values:
            for doc_value in doc_values:
                f = report.figures(replace(cfg, **{faq_key: faq_value, doc_key: doc_value}))
                lines.append(f"{faq_value:14.2f} {doc_value:14.2f}  {f['faq_right'] * 100:8.1f}% "
                             f"{f['faq_wrong'] * 100:8.1f}% {f['miss_recognised'] * 100:9.1f}% "
                             f"{f['doc_grounded'] * 100:11.1f}%")
    return "\n".join(lines)
