"""Conversations the server keeps (`"session": "<id>"`): each session's messages as they were heard, in an
embedded SQLite file (the default: it survives a restart) or the PostgreSQL server that several API
processes share (`store:`). A session ends `ttl` seconds after its last turn; it keeps `max_turns`."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from .errors import InvalidRequestError
from .pg import Postgres
from .types import Message

log = logging.getLogger(__name__)
MAX_ID = 128
CHANNEL = "llm_sessions"    # PostgreSQL NOTIFY channel: barge-in between API processes
STALE_TURN = 600.0          # seconds after which a turn another process claimed counts as dead
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
        self.owner = uuid.uuid4().hex     # this process, among those sharing the store

    @property
    def shared(self) -> bool:
        """Whether other API processes may answer the same sessions (a PostgreSQL store)."""
        return isinstance(self.db, _PostgresSQL)

    # Barge-in between API processes (a shared store only): a turn claims its session; a claim that takes
    # the session from another process's live turn tells that process to cut it off, and waits for "kept".

    def claim(self, session: str) -> bool:
        """This process answers `session` now; True when another process's turn was live on it (it has
        been told to cut it off: wait for its `kept` signal)."""
        if not self.shared:
            return False
        before = self.db.claim(checked_id(session), self.owner, time.time())
        if before is None or before[0] == self.owner or before[1] < time.time() - STALE_TURN:
            return False
        self.db.notify({"barge": session, "by": self.owner})
        return True

    def release(self, session: str, barged_by: str | None = None) -> None:
        """The turn of `session` here ended and is kept; `barged_by`: the process that cut it off, told so."""
        if self.shared:
            self.db.release(session, self.owner)
            if barged_by:
                self.db.notify({"kept": session, "for": barged_by})

    def listen(self, on_signal: Callable[[dict], None]) -> None:
        """Call `on_signal` with each signal of another process for this one (from a thread of its own);
        returns once listening. Nothing without a shared store."""
        def mine(signal: dict) -> None:     # not its own barge-in, nor a "kept" meant for another process
            if signal.get("by") != self.owner and signal.get("for", self.owner) == self.owner:
                on_signal(signal)
        if self.shared:
            self.db.listen(mine)

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
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()
        with self.pg.connection() as db:
            columns = _COLUMNS.format(serial="BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION")
            db.execute(f"CREATE TABLE IF NOT EXISTS session_messages ({columns})")
            db.execute("CREATE INDEX IF NOT EXISTS session_messages_session ON session_messages "
                       "(session, seq)")
            # which process answers each session now (barge-in between processes)
            db.execute("CREATE TABLE IF NOT EXISTS session_live (session TEXT PRIMARY KEY, "
                       "owner TEXT NOT NULL, since DOUBLE PRECISION NOT NULL)")

    def claim(self, session: str, owner: str, now: float) -> tuple[str, float] | None:
        """Take the session; the owner and start of the live turn it had, if any."""
        with self.pg.connection() as db, db.transaction():
            db.execute("INSERT INTO session_live VALUES (%s, '', 0) ON CONFLICT DO NOTHING", (session,))
            before = db.execute("SELECT owner, since FROM session_live WHERE session=%s FOR UPDATE",
                                (session,)).fetchone()
            db.execute("UPDATE session_live SET owner=%s, since=%s WHERE session=%s", (owner, now, session))
        return (before[0], before[1]) if before and before[0] else None

    def release(self, session: str, owner: str) -> None:
        with self.pg.connection() as db:
            db.execute("DELETE FROM session_live WHERE session=%s AND owner=%s", (session, owner))

    def notify(self, signal: dict) -> None:
        with self.pg.connection() as db:
            db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(signal)))

    def listen(self, on_signal: Callable[[dict], None]) -> None:
        """LISTEN on a connection of its own, in a thread; returns once listening (or having failed to:
        barge-in between processes then waits for nothing, and the thread keeps trying)."""
        if self._listener is not None:
            return
        ready = threading.Event()
        self._listener = threading.Thread(target=self._listen, args=(on_signal, ready), daemon=True,
                                          name="sessions-listen")
        self._listener.start()
        ready.wait(10)

    def _listen(self, on_signal: Callable[[dict], None], ready: threading.Event) -> None:
        psycopg = self.pg.psycopg
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.pg.dsn, autocommit=True, connect_timeout=5) as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    ready.set()
                    while not self._closed.is_set():
                        for note in db.notifies(timeout=1.0):
                            try:
                                on_signal(json.loads(note.payload))
                            except Exception:   # noqa: BLE001 - one bad signal must not stop the others
                                log.exception("a session signal failed: %r", note.payload)
            except psycopg.Error as e:
                ready.set()
                if self._closed.is_set():
                    return
                log.warning("listening for other API processes' barge-ins failed (%s); retrying", e)
                self._closed.wait(2.0)

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
        self._closed.set()
        self.pg.close()
