"""The sections about where a deployment's state lives: its knowledge (documents, FAQ), the
conversations the server keeps, and the store several API processes share."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .check import Where, expect, is_number

MISS_REPLY = {"zh": "这个问题我暂时回答不了，请咨询现场工作人员。",
              "en": "I can't answer that yet. Please ask a member of staff."}


@dataclass(frozen=True)
class KnowledgeConfig:
    """Where the avatar's knowledge lives (llm/knowledge); off while neither docs nor faq is set."""

    docs: str | None = None           # a folder of .md .txt .html (.pdf .docx with their parser)
    faq: str | None = None            # a CSV of question,answer; a question's variants split by "|"
    on_miss: str = "chat"             # nothing good enough found: chat (answer without) | say (miss_reply)
    miss_reply: Mapping[str, str] = field(default_factory=lambda: dict(MISS_REPLY))   # by language
    index: str | None = None          # the index file; default: .knowledge.sqlite3 in the docs folder
    synonyms: str | None = None       # a file of your own synonym groups, one per line
    passages: int = 3                 # passages given to the model
    faq_threshold: float = 0.55       # how well a question must match an FAQ question (0..1)
    doc_threshold: float = 0.4        # how much of a question a passage must cover (0..1)
    check_every: float = 3.0          # seconds between looks at the folder for changes
    embedding: str | None = None      # an embedding model (bge-small-zh, ...): search by meaning too
    questions: str | None = None      # a provider that writes, once per passage, the questions it answers
    faq_similarity: float = 0.85      # with it: the cosine that makes a question an FAQ entry's
    doc_similarity: float = 0.6       # with it: the cosine that makes a passage good enough

    @property
    def enabled(self) -> bool:
        return bool(self.docs or self.faq)


@dataclass(frozen=True)
class SessionsConfig:
    """Conversations the server keeps (llm/sessions.py)."""

    ttl: float = 86400.0              # seconds after its last turn that a session is forgotten
    max_turns: int = 50               # turns kept per session (the oldest go first)
    folder: str = "data"              # the embedded store's folder (sessions.sqlite3), without `store:`


def knowledge_from(data: Any, where: Where, base: Path) -> KnowledgeConfig:
    """The knowledge section; its paths are relative to the config file's folder."""
    data = expect(data or {}, dict, where, "knowledge")
    where.unknown_keys(data, [f.name for f in fields(KnowledgeConfig)], "knowledge.")
    values: dict[str, Any] = {}
    for k, v in data.items():
        key = f"knowledge.{k}"
        if k in ("docs", "faq", "index", "synonyms"):
            if v is None:
                continue
            path = base / expect(v, str, where, key)
            must = {"docs": path.is_dir(), "faq": path.is_file(), "synonyms": path.is_file(), "index": True}
            if not must[k]:
                what = "folder" if k == "docs" else "file"
                where.fail(key, f"{path} is not an existing {what}: create it, or fix the path "
                                "(relative to the config file's folder)")
            values[k] = str(path)
        elif k == "on_miss":
            if v not in ("chat", "say"):
                where.fail(key, "must be chat (answer without the knowledge) or say (say miss_reply)")
            values[k] = v
        elif k == "miss_reply":
            replies = {"zh": v, "en": v} if isinstance(v, str) else v
            if not isinstance(replies, dict) or set(replies) - {"zh", "en"} or not all(
                    isinstance(r, str) and r.strip() for r in replies.values()):
                where.fail(key, "must be a sentence, or {zh: ..., en: ...} for each language")
            values[k] = {**MISS_REPLY, **replies}
        elif k == "passages":
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 20:
                where.fail(key, "must be a whole number from 1 to 20")
            values[k] = v
        elif k in ("embedding", "questions"):
            values[k] = None if v is None else expect(v, str, where, key)
        elif k in ("faq_threshold", "doc_threshold", "faq_similarity", "doc_similarity"):
            if not is_number(v) or not 0 <= v <= 1:
                where.fail(key, "must be a number from 0 to 1 (see python -m llm kb eval)")
            values[k] = float(v)
        else:   # check_every
            if not is_number(v) or v < 0:
                where.fail(key, "must be a number of seconds, 0 or more")
            values[k] = float(v)
    return KnowledgeConfig(**values)


def sessions_from(data: Any, where: Where, base: Path) -> SessionsConfig:
    data = expect(data or {}, dict, where, "sessions")
    where.unknown_keys(data, [f.name for f in fields(SessionsConfig)], "sessions.")
    values: dict[str, Any] = {}
    if "ttl" in data:
        if not is_number(data["ttl"]) or data["ttl"] <= 0:
            where.fail("sessions.ttl", "must be a positive number of seconds")
        values["ttl"] = float(data["ttl"])
    if "max_turns" in data:
        turns = data["max_turns"]
        if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
            where.fail("sessions.max_turns", "must be a positive integer")
        values["max_turns"] = turns
    if "folder" in data:
        values["folder"] = str(base / expect(data["folder"], str, where, "sessions.folder"))
    return SessionsConfig(**values)


def store_url(value: str, where: Where, key: str) -> str | None:
    if value.strip().lower() in ("", "embedded", "sqlite"):
        return None
    if not value.startswith(("postgresql://", "postgres://")):
        where.fail(key, "must be embedded (the default) or a postgresql://user:password@host/database URL")
    return value
