"""The search index: one SQLite file (FTS5) beside the documents, updated file by file as they change.

Why SQLite FTS5 (measured in bench/knowledge_bench.py): it ships with Python (no server, no package),
updates one file's passages in place (bm25s and the vector stores rebuild or append), lets several
processes read one file while one writes (WAL), and finds candidates at 10,000 passages in a few ms.
Candidates are then scored here with the question's synonyms (`text.slots`), which FTS5 cannot do.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import sqlite3
import threading
from pathlib import Path

from . import score
from . import text as T
from .dense import Embedder, Vectors
from .docs import MAX_FILE_BYTES, Passage, Unreadable, faq_entries, passages
from .score import Hit
from .store import Entry

log = logging.getLogger(__name__)

SCHEMA_VERSION = "4"
CANDIDATES = 40     # passages FTS5 hands over for scoring
MATCH_SHARE = 0.1  # a term in more of the passages does not bring candidates (see _selective)


class Index:
    """The passages of a documents folder and an FAQ file, searchable; `sync` brings it up to date."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._write = threading.Lock()
        self.embedder: Embedder | None = None    # set when an embedding model is loaded
        self.writer_name = ""                    # the provider that writes questions for passages, if any
        self.vectors = Vectors()
        self._sizes: tuple[int, int, float] = (-1, 0, 1.0)   # (generation, passages, average length)
        self._vectors_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db()
        with self._write, _transaction(db):
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            version = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if version is None or version[0] != SCHEMA_VERSION:     # an index from another version: anew
                for table in ("vocab", "terms", "passages", "files", "vectors", "asked"):
                    db.execute(f"DROP TABLE IF EXISTS {table}")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- keeping up with the files --------------------------------------------------------------------

    def sync(self, entries: dict[str, Entry]) -> dict[str, int]:
        """Index what changed among `entries` (a store's listing) since the last sync: a new version is
        read, and indexed again if its content hash changed; a source no longer listed is dropped.
        Returns counts of what it did."""
        counts = {"added": 0, "changed": 0, "removed": 0, "skipped": 0}
        with self._write:
            db = self._db()
            known = {row[0]: row[1:] for row in db.execute("SELECT source, version, sha FROM files")}
            for source in set(known) - set(entries):
                with _transaction(db):
                    self._drop(db, source)
                counts["removed"] += 1
            for source, entry in sorted(entries.items()):
                old = known.get(source)
                if old is not None and old[0] == entry.version:
                    continue
                done = self._read(db, source, entry, old[1] if old else None)
                if done:
                    counts["changed" if old else "added"] += 1
                elif done is None:
                    counts["skipped"] += 1
            embedded = self._embed_missing(db)
            if embedded or counts["added"] or counts["changed"] or counts["removed"]:
                with _transaction(db):
                    db.execute("UPDATE meta SET value = value + 1 WHERE key='generation'")
        return counts

    def _embed_missing(self, db: sqlite3.Connection) -> int:
        """Vectors for the passages that have none (all of them after a change of model)."""
        if self.embedder is None:
            return 0
        model = db.execute("SELECT value FROM meta WHERE key='embedding'").fetchone()
        if model is None or model[0] != self.embedder.name:
            with _transaction(db):
                db.execute("DELETE FROM vectors")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('embedding', ?)", (self.embedder.name,))
        todo = db.execute("SELECT p.id, p.title, p.text FROM passages p LEFT JOIN vectors v ON v.id = p.id "
                          "WHERE v.id IS NULL").fetchall()
        for start in range(0, len(todo), 256):
            batch = todo[start:start + 256]
            vecs = self.embedder.embed([Passage("", t, x).searchable for _, t, x in batch])
            with _transaction(db):
                db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                               [(pid, vec.astype("float32").tobytes()) for (pid, _, _), vec in zip(
                                   batch, vecs, strict=True)])
        return len(todo)

    def _read(self, db: sqlite3.Connection, source: str, entry: Entry, old_sha: str | None) -> bool | None:
        """(Re)index one document; False when its content did not change, None when it is skipped."""
        data, rows, skipped = b"", [], None
        try:
            if entry.size > MAX_FILE_BYTES:     # not even read
                raise Unreadable(f"{entry.size / 1e6:.0f} MB is over the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
            data = entry.read()
        except (OSError, Unreadable) as e:
            skipped = str(e) if isinstance(e, Unreadable) else f"cannot be read: {e}"
        sha = hashlib.sha256(data).hexdigest()
        if sha == old_sha and skipped is None:
            with _transaction(db):
                db.execute("UPDATE files SET version=? WHERE source=?", (entry.version, source))
            return False
        if skipped is None:
            try:
                rows = _faq_rows(source, data) if entry.kind == "faq" else [
                    (p, "", -1) for p in passages(Path(source), source, data)]
            except Unreadable as e:
                skipped = str(e)
        if skipped is not None:
            log.warning("knowledge: skipped %s: %s", source, skipped)
        with _transaction(db):
            self._drop(db, source)
            db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                       (source, entry.kind, entry.version, len(data), sha, skipped))
            firsts: set[int] = set()
            for passage, answer, number in rows:
                first = entry.kind == "doc" or number not in firsts     # an FAQ entry is asked about once
                firsts.add(number)
                asked = self._asked(db, passage) if first else None
                self._insert(db, source, entry.kind, passage, answer, number,
                             _words(passage, asked if entry.kind == "doc" else None))
                if asked and entry.kind == "faq":
                    self._insert_variants(db, source, passage.text, answer, number, asked)
        return None if skipped else True

    @staticmethod
    def _insert(db: sqlite3.Connection, source: str, kind: str, passage: Passage, answer: str, entry: int,
                words: str) -> None:
        cur = db.execute("INSERT INTO passages (source, kind, title, text, answer, entry) VALUES "
                         "(?, ?, ?, ?, ?, ?)", (source, kind, passage.title, passage.text, answer, entry))
        db.execute("INSERT INTO terms (rowid, words) VALUES (?, ?)", (cur.lastrowid, words))

    def _insert_variants(self, db: sqlite3.Connection, source: str, question: str, answer: str, entry: int,
                         written: str) -> None:
        """The other ways of asking an FAQ question, written by the model: more variants of its entry
        (their title is the question as the FAQ has it, which is what a reply names)."""
        for variant in filter(None, written.split("\n")):
            self._insert(db, source, "faq", Passage(source, question, variant), answer, entry,
                         " ".join(T.terms(variant)))

    # -- questions written for each passage (once, by the configured model) ---------------------------

    def _key(self, passage: Passage) -> str:
        return hashlib.sha256(f"{self.writer_name}\n{passage.title}\n{passage.text}".encode()).hexdigest()

    def _asked(self, db: sqlite3.Connection, passage: Passage) -> str | None:
        """The questions written for this passage before (by the same writer), if any."""
        if not self.writer_name:
            return None
        row = db.execute("SELECT questions FROM asked WHERE key=?", (self._key(passage),)).fetchone()
        return row[0] if row else None

    def unasked(self, limit: int = 100) -> list[tuple[int, Passage, str]]:
        """(id, passage, FAQ answer or "") of the document passages and FAQ entries (their first
        question) that have no written questions yet."""
        if not self.writer_name:
            return []
        out = []
        db = self._db()
        for pid, source, title, body, answer in db.execute(
                "SELECT id, source, title, text, answer FROM passages WHERE kind='doc' OR id IN "
                "(SELECT min(id) FROM passages WHERE kind='faq' GROUP BY source, entry) ORDER BY id"):
            passage = Passage(source, title, body)
            if self._asked(db, passage) is None:
                out.append((pid, passage, answer))
                if len(out) >= limit:
                    break
        return out

    def add_questions(self, pid: int, passage: Passage, questions: list[str]) -> None:
        """Keep the questions written for a passage, and make them part of what finds it: a document
        passage's terms, or more variants of an FAQ entry."""
        text = "\n".join(questions)
        db = self._db()
        with self._write, _transaction(db):
            db.execute("INSERT OR REPLACE INTO asked VALUES (?, ?)", (self._key(passage), text))
            row = db.execute("SELECT kind, answer, entry FROM passages WHERE id=?", (pid,)).fetchone()
            if row is None:     # indexed anew since: that found the questions in `asked`
                return
            kind, answer, entry = row
            if kind == "faq":
                self._insert_variants(db, passage.source, passage.text, answer, entry, text)
            else:
                db.execute("DELETE FROM terms WHERE rowid=?", (pid,))
                db.execute("INSERT INTO terms (rowid, words) VALUES (?, ?)", (pid, _words(passage, text)))
            db.execute("UPDATE meta SET value = value + 1 WHERE key='generation'")

    @staticmethod
    def _drop(db: sqlite3.Connection, source: str) -> None:
        db.execute("DELETE FROM vectors WHERE id IN (SELECT id FROM passages WHERE source=?)", (source,))
        db.execute("DELETE FROM terms WHERE rowid IN (SELECT id FROM passages WHERE source=?)", (source,))
        db.execute("DELETE FROM passages WHERE source=?", (source,))
        db.execute("DELETE FROM files WHERE source=?", (source,))

    # -- searching ------------------------------------------------------------------------------------

    def search(self, question: str, synonyms: T.Synonyms, limit: int = 5) -> list[Hit]:
        """The passages that answer the question best, best first: FTS5's candidates scored by how much of
        the question they cover (FAQ variants both ways) and BM25; with an embedding model, also the
        nearest by meaning, the two rankings fused (reciprocal rank fusion)."""
        asked = T.slots(question, synonyms)
        db = self._db()
        df = self._df(db, {t for slot in asked for alt in slot.alternatives for t in alt}
                      | {t for slot in asked for t in slot.related})
        match = T.fts_query(self._selective(db, asked, df))
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM terms JOIN passages p ON p.id = terms.rowid WHERE terms MATCH ? "
            "ORDER BY bm25(terms) LIMIT ?", (match, CANDIDATES)).fetchall() if match else []
        near = self._nearest(db, question)
        if missing := [i for i in near if i not in {r[0] for r in rows}]:
            rows += db.execute(f"SELECT {_COLUMNS} FROM terms JOIN passages p ON p.id = terms.rowid "
                               f"WHERE p.id IN ({','.join('?' * len(missing))})", missing).fetchall()
        if not rows:
            return []
        hits = self._scored(db, question, asked, synonyms, rows, near, df)
        out, seen_entries = [], set()
        for hit in hits:     # one variant per FAQ entry: its best
            if hit.kind == "faq":
                if hit.entry in seen_entries:
                    continue
                seen_entries.add(hit.entry)
            out.append(hit)
        return out[:limit]

    def _scored(self, db: sqlite3.Connection, question: str, asked: list[T.Slot], synonyms: T.Synonyms,
                rows: list[tuple], near: dict[int, float], df: dict[str, int]) -> list[Hit]:
        variants = {body: T.slots(body, synonyms) for _, _, kind, _, body, *_ in rows if kind == "faq"}
        more = {t for found in variants.values() for slot in found for alt in slot.alternatives for t in alt}
        df = {**df, **self._df(db, more - set(df))}
        n, avg = self._corpus(db)
        idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
        return score.rank(question, asked, variants, rows, near, idf, avg)

    def _nearest(self, db: sqlite3.Connection, question: str) -> dict[int, float]:
        """Passage id -> cosine of the nearest passages by meaning, nearest first ({} without a model)."""
        if self.embedder is None:
            return {}
        generation = self._generation(db)
        with self._vectors_lock:
            if self.vectors.generation != generation:
                self.vectors.load(db.execute("SELECT id, vec FROM vectors").fetchall(), generation)
            vectors = self.vectors
        return dict(vectors.nearest(self.embedder.embed([question], query=True)[0], CANDIDATES))

    def _selective(self, db: sqlite3.Connection, asked: list[T.Slot], df: dict[str, int]) -> list[str]:
        """The terms FTS5 looks for: the words (and their synonyms) and bigrams of the question that are
        in fewer than MATCH_SHARE of the passages. A term in most of them (a common character, 博物馆 in a
        museum's documents) would have FTS5 rank most of the index (measured: 65% of 10,000 passages,
        25 ms) for candidates the others find anyway; it still counts in the scoring."""
        n, _ = self._corpus(db)
        terms = {t for slot in asked if slot.weight > T.UNIGRAM_WEIGHT
                 for t in [*(t for alt in slot.alternatives for t in alt), *slot.related]}
        found = sorted((t for t in terms if df.get(t)), key=lambda t: (df[t], t))
        rare = [t for t in found if df[t] <= max(MATCH_SHARE * n, 1)]
        return rare if len(rare) >= 2 else found[:2] or sorted((t for t in df if df[t]), key=df.get)[:2]

    def _generation(self, db: sqlite3.Connection) -> int:
        """A number that changes whenever the index does (in any process)."""
        return int(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def _corpus(self, db: sqlite3.Connection) -> tuple[int, float]:
        """(passages, their average length in terms), counted again only when the index has changed."""
        generation = self._generation(db)
        if self._sizes[0] != generation:
            n, total = db.execute("SELECT count(*), sum(length(words) - length(replace(words, ' ', '')) + 1) "
                                  "FROM terms").fetchone()
            self._sizes = (generation, n or 0, (total or 1) / (n or 1))
        return self._sizes[1], self._sizes[2]

    def _df(self, db: sqlite3.Connection, terms: set[str]) -> dict[str, int]:
        """How many passages hold each term (0 for none)."""
        if not terms:
            return {}
        marks = ",".join("?" * len(terms))
        found = dict(db.execute(f"SELECT term, doc FROM vocab WHERE term IN ({marks})", tuple(terms)))
        return {t: found.get(t, 0) for t in terms}

    def faq_firsts(self) -> dict[str, str]:
        """Each FAQ question variant -> the first variant of its entry (how an evaluation names it)."""
        rows = self._db().execute("SELECT text, entry, source, id FROM passages WHERE kind='faq' ORDER BY id")
        first: dict[tuple[str, int], str] = {}
        out = {}
        for text, entry, source, _ in rows:
            out[text] = first.setdefault((source, entry), text)
        return out

    def stats(self) -> dict:
        db = self._db()
        files = db.execute("SELECT kind, count(*), count(skipped) FROM files GROUP BY kind").fetchall()
        by_kind = {kind: (n, skipped) for kind, n, skipped in files}
        return {"documents": by_kind.get("doc", (0, 0))[0] - by_kind.get("doc", (0, 0))[1],
                "skipped": sum(s for _, s in by_kind.values()),
                "faq_files": by_kind.get("faq", (0, 0))[0],
                "passages": db.execute("SELECT count(*) FROM passages WHERE kind='doc'").fetchone()[0],
                "faq_questions": db.execute("SELECT count(*) FROM passages WHERE kind='faq'").fetchone()[0],
                "bytes": self.path.stat().st_size if self.path.exists() else 0}

    def files(self) -> list[dict]:
        rows = self._db().execute(
            "SELECT f.source, f.kind, f.size, f.skipped, count(p.id) FROM files f "
            "LEFT JOIN passages p ON p.source = f.source GROUP BY f.source ORDER BY f.source")
        return [{"source": s, "kind": k, "size": size, "skipped": sk, "passages": n}
                for s, k, size, sk, n in rows]


_COLUMNS = "p.id, p.source, p.kind, p.title, p.text, p.answer, p.entry, terms.words"


def _words(passage: Passage, asked: str | None) -> str:
    """What FTS5 holds for a passage: its terms, and those of the questions written for it."""
    return " ".join(T.terms(passage.searchable) + (T.terms(asked) if asked else []))


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection):
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _faq_rows(source: str, data: bytes) -> list[tuple[Passage, str, int]]:
    entries = faq_entries(data)
    return [(Passage(source, "", q), e.answer, i) for i, e in enumerate(entries) for q in e.questions]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (source TEXT PRIMARY KEY, kind TEXT, version TEXT, size INTEGER, sha TEXT,
                                  skipped TEXT);
CREATE TABLE IF NOT EXISTS passages (id INTEGER PRIMARY KEY, source TEXT, kind TEXT, title TEXT, text TEXT,
                                     answer TEXT, entry INTEGER);
CREATE INDEX IF NOT EXISTS passages_source ON passages (source);
CREATE VIRTUAL TABLE IF NOT EXISTS terms USING fts5 (words, tokenize = 'unicode61 remove_diacritics 0');
CREATE VIRTUAL TABLE IF NOT EXISTS vocab USING fts5vocab (terms, 'row');
CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS asked (key TEXT PRIMARY KEY, questions TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', '0');
"""
