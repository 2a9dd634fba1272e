"""Where the documents live: a folder (embedded, the default), or a PostgreSQL table that several API
processes share. Each process keeps its own index (index.py) and follows the documents from either."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InvalidRequestError
from ..pg import Postgres
from .docs import MAX_FILE_BYTES, Unreadable, passages, readable


@dataclass(frozen=True)
class Entry:
    """One document as a store lists it: `version` changes whenever its content may have."""

    kind: str                       # "doc" or "faq"
    version: str
    size: int
    read: Callable[[], bytes]


def checked_name(name: str) -> str:
    """A document name for an upload: a file name (a folder in it is kept, "a/b.md"), never outside the
    store, of a kind that is read. InvalidRequestError says what is wrong."""
    name = name.replace("\\", "/").strip().strip("/")
    parts = name.split("/")
    if not name or len(name) > 200 or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or \
            re.search(r"[\x00-\x1f\x7f]", name):
        raise InvalidRequestError(f"{name[:80]!r} is not a usable document name",
                                  fix="use a plain file name such as tickets.md")
    if not readable(Path(parts[-1])):
        raise InvalidRequestError(f"{parts[-1]!r} is not a kind of document the knowledge reads",
                                  fix="upload .md, .txt or .html (.pdf, .docx with their parser installed)")
    return "/".join(parts)


def check_document(name: str, data: bytes) -> int:
    """The number of passages in an upload; InvalidRequestError when it would be skipped (and why)."""
    if len(data) > MAX_FILE_BYTES:
        raise InvalidRequestError(f"{name} is {len(data) / 1e6:.0f} MB: the limit is "
                                  f"{MAX_FILE_BYTES / 1e6:.0f} MB")
    try:
        return len(passages(Path(name), name, data))
    except Unreadable as e:
        raise InvalidRequestError(f"{name}: {e}", fix="upload a text document in UTF-8") from e


class FolderStore:
    """Documents as files under a folder (hidden files and folders are not documents)."""

    where = "folder"

    def __init__(self, folder: Path, faq: Path | None = None):
        self.folder, self.faq = folder, faq

    def entries(self) -> dict[str, Entry]:
        found = {}
        if self.folder is not None and self.folder.is_dir():
            for path in sorted(self.folder.rglob("*")):
                rel = path.relative_to(self.folder)
                if any(p.startswith(".") for p in rel.parts[:-1]) or not readable(path):
                    continue
                if (entry := _file_entry("doc", path)) is not None:
                    found[rel.as_posix()] = entry
        if self.faq is not None and (entry := _file_entry("faq", self.faq)) is not None:
            found[self.faq.name] = entry
        return found

    def put(self, name: str, data: bytes) -> None:
        """Write a document whole or not at all (a reader never sees half a file)."""
        if self.folder is None:
            raise InvalidRequestError("no documents folder is configured", fix="set knowledge.docs")
        target = self.folder / checked_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, name: str) -> bool:
        path = self.folder / checked_name(name) if self.folder is not None else None
        if path is None or not path.is_file():
            return False
        path.unlink()
        return True


def _file_entry(kind: str, path: Path) -> Entry | None:
    try:
        st = path.stat()
    except OSError:
        return None     # removed meanwhile
    if not path.is_file():
        return None
    return Entry(kind, f"{st.st_size}:{st.st_mtime_ns}", st.st_size, path.read_bytes)


class PostgresStore:
    """Documents in a PostgreSQL table (`knowledge_documents`), for several API processes; uploads go here."""

    where = "postgres"

    def __init__(self, dsn: str):
        self.pg = Postgres(dsn)
        with self.pg.connection() as db:
            db.execute("CREATE TABLE IF NOT EXISTS knowledge_documents (name TEXT PRIMARY KEY, "
                       "data BYTEA NOT NULL, sha TEXT NOT NULL, "
                       "updated_at TIMESTAMPTZ NOT NULL DEFAULT now())")

    def entries(self) -> dict[str, Entry]:
        with self.pg.connection() as db:
            rows = db.execute("SELECT name, sha, octet_length(data) FROM knowledge_documents").fetchall()
        return {name: Entry("doc", sha, size, lambda name=name: self._read(name)) for name, sha, size in rows}

    def _read(self, name: str) -> bytes:
        with self.pg.connection() as db:
            row = db.execute("SELECT data FROM knowledge_documents WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise FileNotFoundError(name)
        return bytes(row[0])

    def put(self, name: str, data: bytes) -> None:
        with self.pg.connection() as db:
            db.execute("INSERT INTO knowledge_documents (name, data, sha) VALUES (%s, %s, %s) "
                       "ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data, sha = EXCLUDED.sha, "
                       "updated_at = now()",
                       (checked_name(name), data, hashlib.sha256(data).hexdigest()))

    def delete(self, name: str) -> bool:
        with self.pg.connection() as db:
            gone = db.execute("DELETE FROM knowledge_documents WHERE name = %s", (checked_name(name),))
            return gone.rowcount > 0

    def close(self) -> None:
        self.pg.close()
