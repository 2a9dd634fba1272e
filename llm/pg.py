"""The PostgreSQL server several API processes share (`store:` in configs.yaml): one connection per
thread, and a server that is down or goes away is a NotReadyError (HTTP 503) with the fix, never a crash."""

from __future__ import annotations

import threading

from .errors import ConfigError, NotReadyError


class Postgres:
    def __init__(self, dsn: str):
        try:
            import psycopg
        except ImportError as e:
            raise ConfigError("store: a PostgreSQL store needs the psycopg package",
                              fix='pip install "psycopg[binary]"') from e
        self.dsn, self.psycopg = dsn, psycopg
        self._local = threading.local()

    def connection(self) -> _Using:
        """This thread's connection for one block (autocommit; `transaction()` on it for more than one
        statement), opened again when needed."""
        db = getattr(self._local, "db", None)
        if db is None or db.closed or db.broken:
            try:
                db = self.psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            except self.psycopg.OperationalError as e:
                raise NotReadyError(f"the PostgreSQL store is unreachable: {_first_line(e)}",
                                    fix="start PostgreSQL, or fix store in configs.yaml / $LLM_STORE") from e
            self._local.db = db
        return _Using(db, self.psycopg)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()


class _Using:
    """A connection for one block: a server that went away mid-query is a NotReadyError with the fix."""

    def __init__(self, db, psycopg):
        self.db, self.psycopg = db, psycopg

    def __enter__(self):
        return self.db

    def __exit__(self, typ, exc, tb):
        if isinstance(exc, self.psycopg.OperationalError):
            raise NotReadyError(f"the PostgreSQL store failed: {_first_line(exc)}",
                                fix="check that PostgreSQL is running and reachable") from exc
        return False


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
