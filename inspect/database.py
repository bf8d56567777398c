"""The connection to a results database: SQLite in a results folder, or PostgreSQL for a plant store.

A results store is named by one string: a folder (``runs/line3``, which holds ``results.sqlite``) or a PostgreSQL URL
(``postgresql://qa@db.plant:5432/crackscope``: every line of a plant writes there, and one review serves them all).
:func:`is_database_url` tells the two apart; :class:`Connection` is what both stores talk to, whichever it is:

* statements are written with ``?`` marks (as :mod:`sqlite3` takes them); a PostgreSQL connection turns them into
  psycopg's ``%s`` (no statement of crackscope holds a literal ``?`` or ``%``); :mod:`.schema` builds the SQL that
  differs between the two (:class:`~crackscope.inspect.schema.Dialect`);
* :meth:`Connection.transaction` is one transaction (committed when the block ends, rolled back when it raises), and
  a statement outside one commits by itself: a reader sees what the writers have committed;
* :meth:`Connection.transact` runs a block as one transaction and, when a PostgreSQL server went away (a restart, a
  network cut), connects again with backoff and runs the block again; so too when the server rolled it back to
  resolve a deadlock or a serialisation conflict with another writer. A writer's block must therefore be safe to
  repeat, as ``INSERT ... ON CONFLICT DO NOTHING`` of records is.

psycopg (``pip install 'crackscope[plant]'``) is imported only when a URL is opened: SQLite needs nothing beyond the
standard library. Passwords never appear in messages (:func:`redact`); libpq's ``PGPASSWORD`` or ``~/.pgpass`` keep
them out of command lines and saved configs altogether.

Example:
    >>> is_database_url("postgresql://qa@db.plant/crackscope"), is_database_url("runs/line3")
    (True, False)
    >>> redact("postgresql://qa:secret@db.plant/crackscope")
    'postgresql://qa:***@db.plant/crackscope'
    >>> with connect("postgresql://qa@db.plant/crackscope") as db:        # doctest: +SKIP
    ...     with db.transaction():
    ...         db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", ("a", "1"))
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from crackscope.inspect.schema import POSTGRESQL, SQLITE, Dialect

log = logging.getLogger(__name__)

URL_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 10  # libpq waits forever for an unreachable host unless told otherwise
RECONNECT_S = 120.0  # how long a writer keeps trying to reach a PostgreSQL server that went away
T = TypeVar("T")


class DatabaseError(RuntimeError):
    """A database that cannot be opened: no driver, the server cannot be reached, the login is refused."""


class DatabaseUnreachable(DatabaseError):
    """A PostgreSQL server that did not answer (down, restarting, not up yet): worth trying again later."""


def is_database_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``) rather than a folder."""
    return isinstance(target, str) and target.strip().lower().startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """``url`` without its password (in the address or a ``password=`` parameter), for messages and saved configs."""
    url = re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


class Connection:
    """An open results database (a context manager): :mod:`sqlite3` for a file, psycopg 3 for a URL."""

    def __init__(self, target: str | os.PathLike, *, check_same_thread: bool = True) -> None:
        self.target = str(target)
        self.dialect: Dialect = POSTGRESQL if is_database_url(self.target) else SQLITE
        self.name = redact(self.target)
        self._check_same_thread = check_same_thread
        self.errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)
        self._raw: Any = self._open()

    def _open(self) -> Any:
        if self.dialect is SQLITE:
            return sqlite3.connect(self.target, timeout=30, check_same_thread=self._check_same_thread)
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ModuleNotFoundError as error:
            raise DatabaseError(
                f"{self.name}: a PostgreSQL store needs psycopg: pip install 'crackscope[plant]'"
            ) from error
        self.errors = (psycopg.Error,)
        try:
            given = conninfo_to_dict(self.target)
            timeout = {} if "connect_timeout" in given else {"connect_timeout": CONNECT_TIMEOUT_S}
            return psycopg.connect(self.target, autocommit=True, **timeout)
        except psycopg.Error as error:
            raise DatabaseUnreachable(f"{self.name}: cannot connect ({first_line(error)})") from None

    @property
    def is_postgresql(self) -> bool:
        return self.dialect is POSTGRESQL

    # --- statements ---------------------------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        """Run one statement (``?`` marks) and return the driver's cursor."""
        if self.is_postgresql:
            return self._raw.execute(sql.replace("?", "%s"), tuple(params) if params else None)
        return self._raw.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if self.is_postgresql:
            with self._raw.cursor() as cursor:
                cursor.executemany(sql.replace("?", "%s"), [tuple(row) for row in rows])
        else:
            self._raw.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        if self.is_postgresql:
            with self._raw.transaction():
                yield self
        else:
            with self._raw:
                yield self

    def transact(self, work: Callable[[Connection], T], *, retry_s: float = RECONNECT_S) -> T:
        """``work(self)`` as one transaction; when a PostgreSQL server went away, connect again and repeat it.

        Connecting again is tried with backoff (0.5 s doubling to 8 s) for ``retry_s`` seconds, then the last error
        is raised. ``work`` must be safe to run twice: the server may have committed the first run before the
        connection broke.
        """
        deadline = time.monotonic() + retry_s
        delay = 0.5
        while True:
            try:
                with self.transaction():
                    return work(self)
            except self.errors as error:
                if time.monotonic() >= deadline:
                    raise
                if self._transient(error):  # rolled back by the server to let another writer through
                    log.info("%s: %s; repeating the transaction", self.name, first_line(error))
                    time.sleep(0.05)
                    continue
                if not self._lost():
                    raise
                log.warning("%s: connection lost (%s); connecting again", self.name, first_line(error))
            while True:
                time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 2, 8.0)
                try:
                    self._raw = self._open()
                    break
                except DatabaseError:
                    if time.monotonic() >= deadline:
                        raise

    def _transient(self, error: Exception) -> bool:
        """A deadlock or serialisation failure (SQLSTATE class 40): the same transaction succeeds when repeated."""
        return self.is_postgresql and str(getattr(error, "sqlstate", "") or "").startswith("40") and not self._lost()

    def _lost(self) -> bool:
        """Whether the connection itself is gone (not merely a statement refused)."""
        return self.is_postgresql and bool(self._raw.broken or self._raw.closed)

    # --- lifetime -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(target: str | os.PathLike, *, check_same_thread: bool = True) -> Connection:
    """A :class:`Connection` to a SQLite file or a PostgreSQL URL."""
    return Connection(target, check_same_thread=check_same_thread)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (libpq's run to several)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
