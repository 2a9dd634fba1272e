"""Conversations the server keeps (`"session": "<id>"`): each session's messages as they were heard, in an
embedded SQLite file (the default: it survives a restart) or the PostgreSQL server that several API
processes share (`store:`). A session ends `ttl` seconds after its last turn; it keeps `max_turns`."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from pathlib import Path

from .errors import InvalidRequestError
from .pg import Postgres
from .types import Message

MAX_ID = 128
_BAD_ID = re.compile(r"[\x00-\x1f\x7f]")


def checked_id(session: object) -> str:
    """A session id as the API takes it: 1 to 128 characters, none of them control characters."""
    if not isinstance(session, str) or not session or len(session) > MAX_ID or _BAD_ID.search(session):
        raise InvalidRequestError(f"session must be a string of 1 to {MAX_ID} characters without control "
                                  "characters", param="session")
    return session


class Sessions:
    """The sessions of one deployment (`configs.SessionsConfig`), in SQLite or PostgreSQL."""

    def __init__(self, config, store: str | None = None):
        self.config = config
        self.db: _SQL = _PostgresSQL(store) if store else _SQLiteSQL(Path(config.folder) / "sessions.sqlite3")

    def history(self, session: str) -> list[Message]:
        """The session's messages for the model (none once it has expired)."""
        return [Message(m["role"], m["content"]) for m in self.messages(session) or []
                if m["content"] or m["role"] != "assistant"]     # a reply cut off before a word: no reply

    def messages(self, session: str) -> list[dict] | None:
        """The session's messages (role, content, at, provider, and why a reply was cut, if it was);
        None when there is no such session (or it expired)."""
        rows = self.db.rows(checked_id(session), time.time() - self.config.ttl)
        if not rows:
            return None
        return [{"role": role, "content": content, "at": at, **({"provider": provider} if provider else {}),
                 **({"cut": cut} if cut else {})} for role, content, at, provider, cut in rows]

    def record(self, session: str, prompt: str, reply: str, provider: str, cut: str | None = None) -> None:
        """Keep one turn: the prompt, and the reply as far as it was heard (`cut` says why it ended early:
        stopped, hung_up, error; the text never carries a marker). Older turns beyond max_turns go."""
        now = time.time()
        self.db.append(checked_id(session), [("user", prompt, now, None, None),
                                             ("assistant", reply, now, provider, cut)],
                       keep=self.config.max_turns * 2, expired=now - self.config.ttl)

    def heard(self, session: str, sentences: int) -> str | None:
        """The client says only the first `sentences` of the last reply were heard (the avatar was
        stopped): keep only those, cut "stopped". Returns the reply as kept; None when there is none."""
        from .speech import SentenceSplitter

        last = self.db.last_reply(checked_id(session), time.time() - self.config.ttl)
        if last is None:
            return None
        splitter = SentenceSplitter()
        said = splitter.feed(last) + splitter.flush()
        if sentences < len(said):
            last = "".join(said[:sentences])
            self.db.set_last_reply(session, last, "stopped")
        return last

    def forget(self, session: str) -> bool:
        return self.db.delete(checked_id(session))

    def close(self) -> None:
        self.db.close()


Row = tuple[str, str, float, str | None, str | None]


class _SQL:
    def rows(self, session: str, since: float) -> list[Row]: ...
    def last_reply(self, session: str, since: float) -> str | None: ...
    def set_last_reply(self, session: str, content: str, cut: str) -> None: ...
    def append(self, session: str, rows: list[Row], keep: int, expired: float) -> None: ...
    def delete(self, session: str) -> bool: ...
    def close(self) -> None: ...


_COLUMNS = ("session TEXT NOT NULL, seq {serial}, role TEXT NOT NULL, content TEXT NOT NULL, "
            "at {real} NOT NULL, provider TEXT, cut TEXT")


class _SQLiteSQL(_SQL):
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self._local, self._write = path, threading.local(), threading.Lock()
        with self._write:
            columns = _COLUMNS.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL")
            self._db().execute(f"CREATE TABLE IF NOT EXISTS session_messages ({columns})")
            self._db().execute("CREATE INDEX IF NOT EXISTS session_messages_session ON session_messages "
                               "(session, seq)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
        return db

    def rows(self, session: str, since: float) -> list[Row]:
        rows = self._db().execute("SELECT role, content, at, provider, cut FROM session_messages "
                                  "WHERE session=? ORDER BY seq", (session,)).fetchall()
        return rows if rows and rows[-1][2] >= since else []

    def append(self, session: str, rows: list[Row], keep: int, expired: float) -> None:
        db = self._db()
        with self._write:
            db.execute("BEGIN IMMEDIATE")
            try:
                last = db.execute("SELECT max(at) FROM session_messages WHERE session=?",
                                  (session,)).fetchone()[0]
                if last is not None and last < expired:     # it had expired: the turn starts it anew
                    db.execute("DELETE FROM session_messages WHERE session=?", (session,))
                db.executemany("INSERT INTO session_messages (session, role, content, at, provider, cut) "
                               "VALUES (?, ?, ?, ?, ?, ?)", [(session, *r) for r in rows])
                db.execute("DELETE FROM session_messages WHERE session=? AND seq NOT IN (SELECT seq FROM "
                           "session_messages WHERE session=? ORDER BY seq DESC LIMIT ?)",
                           (session, session, keep))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def last_reply(self, session: str, since: float) -> str | None:
        row = self._db().execute("SELECT content, at FROM session_messages WHERE session=? "
                                 "AND role='assistant' ORDER BY seq DESC LIMIT 1", (session,)).fetchone()
        return row[0] if row and row[1] >= since else None

    def set_last_reply(self, session: str, content: str, cut: str) -> None:
        with self._write:
            self._db().execute("UPDATE session_messages SET content=?, cut=? WHERE seq=(SELECT max(seq) "
                               "FROM session_messages WHERE session=? AND role='assistant')",
                               (content, cut, session))

    def delete(self, session: str) -> bool:
        with self._write:
            return self._db().execute("DELETE FROM session_messages WHERE session=?", (session,)).rowcount > 0

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class _PostgresSQL(_SQL):
    def __init__(self, dsn: str):
        self.pg = Postgres(dsn)
        with self.pg.connection() as db:
            columns = _COLUMNS.format(serial="BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION")
            db.execute(f"CREATE TABLE IF NOT EXISTS session_messages ({columns})")
            db.execute("CREATE INDEX IF NOT EXISTS session_messages_session ON session_messages "
                       "(session, seq)")

    def rows(self, session: str, since: float) -> list[Row]:
        with self.pg.connection() as db:
            rows = db.execute("SELECT role, content, at, provider, cut FROM session_messages "
                              "WHERE session=%s ORDER BY seq", (session,)).fetchall()
        return [tuple(r) for r in rows] if rows and rows[-1][2] >= since else []

    def append(self, session: str, rows: list[Row], keep: int, expired: float) -> None:
        with self.pg.connection() as db, db.transaction():
            # one writer per session at a time: two processes never interleave a session's turns
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (session,))
            last = db.execute("SELECT max(at) FROM session_messages WHERE session=%s",
                              (session,)).fetchone()[0]
            if last is not None and last < expired:
                db.execute("DELETE FROM session_messages WHERE session=%s", (session,))
            db.cursor().executemany("INSERT INTO session_messages (session, role, content, at, provider, "
                                    "cut) VALUES (%s, %s, %s, %s, %s, %s)", [(session, *r) for r in rows])
            db.execute("DELETE FROM session_messages WHERE session=%s AND seq NOT IN (SELECT seq FROM "
                       "session_messages WHERE session=%s ORDER BY seq DESC LIMIT %s)",
                       (session, session, keep))

    def last_reply(self, session: str, since: float) -> str | None:
        with self.pg.connection() as db:
            row = db.execute("SELECT content, at FROM session_messages WHERE session=%s AND role='assistant' "
                             "ORDER BY seq DESC LIMIT 1", (session,)).fetchone()
        return row[0] if row and row[1] >= since else None

    def set_last_reply(self, session: str, content: str, cut: str) -> None:
        with self.pg.connection() as db:
            db.execute("UPDATE session_messages SET content=%s, cut=%s WHERE seq=(SELECT max(seq) FROM "
                       "session_messages WHERE session=%s AND role='assistant')", (content, cut, session))

    def delete(self, session: str) -> bool:
        with self.pg.connection() as db:
            return db.execute("DELETE FROM session_messages WHERE session=%s", (session,)).rowcount > 0

    def close(self) -> None:
        self.pg.close()
