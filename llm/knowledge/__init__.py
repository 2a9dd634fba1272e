"""Knowledge: the avatar answers from the documents and FAQ of the place it serves, and says when it
does not know.

Before a provider is called, the question is looked up (`Knowledge.lookup`): an FAQ entry that matches is
the answer, word for word, with no model call; else the best passages ground the model's answer; else, by
`on_miss`, a fixed reply or the model as usual. Every reply names its sources.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidRequestError, NotReadyError
from ..speech import is_chinese
from .docs import Passage
from .index import Index
from .score import Hit
from .store import FolderStore, PostgresStore, check_document, checked_name
from .text import Synonyms

log = logging.getLogger(__name__)

INDEX_NAME = ".knowledge.sqlite3"
GROUNDING = {
    "zh": "只根据下面的资料回答；资料里没有答案时，就说不知道，不要编造。\n资料：",
    "en": "Answer only from the notes below; if they do not hold the answer, say you do not know. "
          "Never make anything up.\nNotes:",
}


@dataclass(frozen=True)
class Grounding:
    """What the knowledge found for one question: a reply to say as it is (`answer`: an FAQ answer or the
    miss reply), or `passages` for the model; and the `sources` the reply names (best first)."""

    sources: tuple[dict, ...] = ()
    answer: str | None = None
    passages: tuple[Passage, ...] = ()

    def instruction(self, chinese: bool) -> str:
        """The system text that puts the passages before the model."""
        lines = [GROUNDING["zh" if chinese else "en"]]
        for i, p in enumerate(self.passages, 1):
            where = f"{p.source}{': ' + p.title if p.title else ''}"
            lines.append(f"[{i}] ({where}) {p.text}")
        return "\n".join(lines)


def decide(hits: list[Hit], cfg) -> tuple[Hit | None, list[Hit]]:
    """The one decision on a search's hits (`lookup` and `kb eval` both make it): the FAQ entry whose
    answer is said as written, else the passages good enough for the model (best first)."""
    best = hits[0] if hits else None
    if best is not None and best.kind == "faq" and (
            best.score >= cfg.faq_threshold or (best.similarity or 0) >= cfg.faq_similarity):
        return best, []
    return None, [h for h in hits if h.score >= cfg.doc_threshold
                  or (h.similarity or 0) >= cfg.doc_similarity][:cfg.passages]


def source_of(hit: Hit) -> dict[str, Any]:
    """A hit as a reply names it; its score is the cover, or the cosine when that is higher."""
    score = max(hit.score, hit.similarity or 0.0)
    text = (hit.passage.title or hit.passage.text) if hit.kind == "faq" else hit.passage.text
    return {"source": hit.passage.source, "kind": hit.kind, "text": text, "score": score}


class Knowledge:
    """The knowledge of one deployment (`configs.KnowledgeConfig`): its index, kept up to date with the
    folder at most every `check_every` seconds, and the lookup for a question."""

    def __init__(self, config, store: str | None = None, writer: Callable[[str], str] | None = None):
        """`store`: a postgresql:// URL where the documents of several API processes live (uploads go
        there); None: the documents folder holds them all. `writer`: a model's answer to a prompt, to
        write the questions each passage answers (`knowledge.questions`), once, in the background."""
        self.config = config
        docs = Path(config.docs) if config.docs else None
        faq = Path(config.faq) if config.faq else None
        self.stores = [FolderStore(docs, faq)] + ([PostgresStore(store)] if store else [])
        home = docs if docs is not None else faq.parent
        self.index = Index(Path(config.index) if config.index else home / INDEX_NAME)
        self.synonyms = Synonyms(Path(config.synonyms) if config.synonyms else None)
        self._checked = 0.0
        self._syncing = threading.Lock()
        self.writer = writer
        self.index.writer_name = (config.questions or "") if writer else ""
        self._writing: threading.Thread | None = None
        self._write_lock = threading.Lock()     # one writer at a time: a passage is never asked twice
        self.dense_status = "off (no knowledge.embedding)"
        if config.embedding:
            self._load_embedder(config.embedding)

    def _load_embedder(self, spec: str) -> None:
        """The embedding model, or (missing, broken) a lexical search that says why in the log."""
        from .dense import Embedder

        try:
            self.index.embedder = Embedder(spec)
            self.dense_status = f"on ({spec}, {self.index.embedder.device})"
        except NotReadyError as e:
            self.dense_status = f"off: {e.message} ({e.fix})"
            log.warning("knowledge: searching by words only: %s; %s", e.message, e.fix)
        except Exception as e:  # noqa: BLE001 - a model that cannot load must not take the answers down
            self.dense_status = f"off: {spec} failed to load: {e}"
            log.exception("knowledge: searching by words only: the embedding model %s failed to load", spec)

    def refresh(self, force: bool = False) -> dict[str, int] | None:
        """Bring the index up to date if it is time (or `force`); None when it was not checked (another
        thread is at it, or it was checked less than `check_every` seconds ago)."""
        if not force and time.monotonic() - self._checked < self.config.check_every:
            return None
        if not self._syncing.acquire(blocking=force or self._checked == 0.0):
            return None     # another thread is syncing: search what is indexed
        try:
            if not force and time.monotonic() - self._checked < self.config.check_every:
                return None     # done by the thread this one waited for
            entries = {}
            try:
                for store in self.stores:   # a shared store's document wins over a file of the same name
                    entries.update(store.entries())
            except NotReadyError as e:      # answer from the index as it is; never read "down" as "empty"
                log.warning("knowledge: not updated: %s (%s)", e.message, e.fix)
                self._checked = time.monotonic()
                return None
            counts = self.index.sync(entries)
            self._checked = time.monotonic()
            if self.writer is not None and (self._writing is None or not self._writing.is_alive()) and \
                    self.index.unasked(limit=1):
                self._writing = threading.Thread(target=self.write_questions, name="knowledge-questions",
                                                 daemon=True)
                self._writing.start()
            if any(counts.values()):
                log.info("knowledge: index updated: %s",
                         ", ".join(f"{k} {v}" for k, v in counts.items() if v))
            return counts
        finally:
            self._syncing.release()

    def search(self, question: str, limit: int | None = None) -> list[Hit]:
        self.refresh()
        return self.index.search(question, self.synonyms, limit or max(5, self.config.passages))

    def lookup(self, question: str) -> Grounding:
        """What to answer `question` from: an FAQ answer, passages, or (a miss) the miss reply or nothing."""
        faq, good = decide(self.search(question), self.config)
        if faq is not None:
            return Grounding((source_of(faq),), answer=faq.answer)
        if good:
            return Grounding(tuple(source_of(h) for h in good),
                             passages=tuple(_as_passage(h) for h in good))
        if self.config.on_miss == "say":
            return Grounding(answer=self.miss_reply(question))
        return Grounding()

    def miss_reply(self, question: str) -> str:
        replies = self.config.miss_reply
        return replies["zh" if is_chinese(question) else "en"]

    def write_questions(self, limit: int | None = None) -> int:
        """Have the writer model write the questions each passage answers, for the passages that have
        none; stops at the first failure of the model (the next refresh tries again). Returns how many
        passages got questions."""
        done = 0
        with self._write_lock:
            while limit is None or done < limit:
                todo = self.index.unasked(limit=20)
                if not todo:
                    break
                for pid, passage, answer in todo:
                    try:
                        written = self.writer(question_prompt(passage, answer))
                    except Exception as e:  # noqa: BLE001 - a model that fails leaves the passage for later
                        log.warning("knowledge: could not write questions for %s: %s", passage.source, e)
                        return done
                    self.index.add_questions(pid, passage, parse_questions(written))
                    done += 1
        if done:
            log.info("knowledge: questions written for %d passages", done)
        return done

    def documents(self) -> list[dict]:
        """The indexed documents and FAQ files: source, kind, size, passages, skipped (why, or None)."""
        self.refresh()
        return self.index.files()

    def upload(self, name: str, data: bytes) -> int:
        """Add or replace a document (in the shared store when there is one, else the folder), indexed at
        once; returns its passages. InvalidRequestError for a name or content the knowledge cannot use."""
        name = checked_name(name)
        found = check_document(name, data)
        self.stores[-1].put(name, data)
        self.refresh(force=True)
        return found

    def delete(self, name: str) -> None:
        """Remove a document from where it lives; InvalidRequestError when there is none of that name."""
        if not any(store.delete(name) for store in reversed(self.stores)):
            raise InvalidRequestError(f"there is no document {name!r}", fix="see the list of documents")
        self.refresh(force=True)

    def close(self) -> None:
        self.index.close()
        for store in self.stores[1:]:
            store.close()


QUESTIONS = {
    "zh": "下面是一段资料。请写出{n}个来访者可能会问、而这段资料能回答的问题：用口语，尽量换一种说法，"
          "不要照抄资料里的词。每行一个问题，不要编号，不要别的内容。\n资料：{text}",
    "en": "Here is a passage. Write {n} questions a visitor might ask that this passage answers: in everyday "
          "words, said differently from the passage. One question per line, no numbers, nothing else.\n"
          "Passage: {text}",
}
REPHRASE = {
    "zh": "下面是一个常见问题和它的答案。请写出{n}种来访者问同一件事的不同说法：用口语，尽量换词，"
          "只问这一件事。每行一个，不要编号，不要别的内容。\n问题：{text}\n答案：{answer}",
    "en": "Here is a frequently asked question and its answer. Write {n} other ways a visitor might ask the "
          "same thing: in everyday words, with other words where you can, asking only this. One per line, "
          "no numbers, nothing else.\nQuestion: {text}\nAnswer: {answer}",
}
QUESTIONS_PER_PASSAGE = 5


def question_prompt(passage: Passage, answer: str = "") -> str:
    """What the writer is asked: the questions a passage answers, or (an FAQ entry) other ways to ask."""
    lang = "zh" if is_chinese(passage.text) else "en"
    if answer:
        return REPHRASE[lang].format(n=QUESTIONS_PER_PASSAGE, text=passage.text, answer=answer)
    return QUESTIONS[lang].format(n=QUESTIONS_PER_PASSAGE, text=passage.searchable)


def parse_questions(written: str) -> list[str]:
    """The questions in a model's answer: one per line, numbers and bullets dropped, at most a few."""
    out = []
    for line in written.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)、:：]|[（(]?\d+[)）])\s*", "", line).strip()
        if 2 <= len(line) <= 120:
            out.append(line)
    return out[:QUESTIONS_PER_PASSAGE * 2]


def _as_passage(hit: Hit) -> Passage:
    """A hit as the model reads it: an FAQ entry as its question and answer."""
    if hit.kind == "faq":
        return Passage(hit.passage.source, "FAQ", f"{hit.passage.title or hit.passage.text} {hit.answer}")
    return hit.passage
