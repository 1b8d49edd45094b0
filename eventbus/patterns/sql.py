"""One small database layer for the patterns' tables: SQLite (aiosqlite) and PostgreSQL (asyncpg).

The event store, projections' checkpoints, saga state, the outbox and the inbox
all keep their rows through it, so a unit of work can write a state change and
the events it caused in one transaction, whichever of the two databases it is.

SQL is written once, with PostgreSQL's numbered placeholders (``$1``, ``$2``...);
on SQLite they are rewritten to SQLite's own numbered form (``?1``, ``?2``...),
which binds the same way. Rows come back as tuples in both.

::

    db = await Database.connect("sqlite:///app.db")        # or "postgresql://u:p@host/db"
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO orders (id, total) VALUES ($1, $2)", order_id, 42)
        rows = await tx.fetch("SELECT id FROM orders WHERE total > $1", 10)
    await db.close()

SQLite has one writer at a time: a transaction there is ``BEGIN IMMEDIATE``, so
two writers queue (up to ``busy_timeout``) instead of failing half-way. Its
connection is shared by the tasks of one process and serialised by a lock, so a
transaction holds the connection until it ends; a transaction opened inside
another by the same task joins it (a savepoint) instead of waiting for itself.

**Errors** are sorted by whether trying again can help (the bus acts on it):

- :class:`DatabaseError` (an ``InfrastructureError``): the database could not be
  reached, was locked or busy, or did not answer in time. A handler raising it
  is *redelivered*, not counted as failed.
- :class:`StatementError`: the database refused the statement for what it says
  (bad SQL, invalid data) and will refuse it again; :class:`IntegrityError` when a
  constraint refused a row (CHECK, NOT NULL, foreign key), :class:`UniqueViolationError`
  for a unique one. A handler raising these *failed*: retried, then dead-lettered,
  and a requester gets an error reply. Catch ``UniqueViolationError`` where a duplicate
  is expected (a race the pattern resolves).

Both derive from :class:`SQLError`. Statements inside ``transaction()`` raise
these classes already, so ``except UniqueViolationError`` works inside the block.

**Timeouts** (PostgreSQL) are URL query options, in seconds (``0`` turns one off):
``command_timeout`` (default 30; any single statement, and waiting for a pooled
connection), ``connect_timeout`` (default 10), ``idle_timeout`` (default 60;
pooled connections idle that long are closed, before a NAT or firewall silently
forgets them) and ``ping_timeout`` (default 5; the ``BEGIN`` of each transaction
doubles as a ping: a connection found closed is replaced once, one that does not
answer in time fails the transaction with :class:`DatabaseError`). SQLite takes
``busy_timeout`` (default 30; how long a writer waits for another's lock).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

from eventbus._deprecation import Renamed, renamed
from eventbus.errors import ConfigurationError, EventBusError, InfrastructureError, mask_url

Dialect = Literal["sqlite", "postgres"]
Row = tuple[Any, ...]

_PLACEHOLDER = re.compile(r"\$(\d+)")


class SQLError(EventBusError):
    """Any error the database gave (see :class:`DatabaseError` and :class:`StatementError`)."""


class DatabaseError(SQLError, InfrastructureError):
    """The database could not be reached, was busy or locked, or did not answer in
    time: the statement may succeed later, so a message is redelivered."""


class StatementError(SQLError):
    """The database refused the statement itself (SQL, data): the same statement
    fails again, so a handler raising it fails (retried, then dead-lettered)."""


class IntegrityError(StatementError):
    """A constraint refused a row: CHECK, NOT NULL, foreign key or unique."""


class UniqueViolationError(IntegrityError):
    """A unique constraint rejected a row (the database's answer to a race, when the
    caller expects it; a handler failure when it does not)."""


class Transaction(Protocol):
    """The statements available inside :meth:`Database.transaction`."""

    dialect: Dialect

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; returns the number of rows it changed."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of arguments."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """All rows of a query."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """The first row of a query, or ``None``."""

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row, or ``None``."""


_BUSY = 30.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The database timeouts read from the URL (seconds; ``None``: no limit)."""

    command: float | None = 30.0
    connect: float | None = 10.0
    idle: float | None = 60.0
    ping: float | None = 5.0
    busy: float = _BUSY


_TIMEOUT_OPTIONS = {
    "command_timeout": "command",
    "connect_timeout": "connect",
    "idle_timeout": "idle",
    "ping_timeout": "ping",
    "busy_timeout": "busy",
}


def split_options(url: str) -> tuple[str, Timeouts]:
    """``url`` without eventbus's own query options, and the timeouts they set."""
    # Split by hand: urlunsplit would rewrite sqlite:////absolute/paths.
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(key in _TIMEOUT_OPTIONS for key, _ in pairs):
        return url, Timeouts()
    kept: list[tuple[str, str]] = []
    values: dict[str, float] = {}
    for key, value in pairs:
        if key not in _TIMEOUT_OPTIONS:
            kept.append((key, value))
            continue
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not seconds >= 0:  # also NaN
            raise ConfigurationError(
                f"{key}={value!r} in database URL {mask_url(url)}: give seconds as a "
                "number >= 0 (0 turns the limit off)"
            )
        values[_TIMEOUT_OPTIONS[key]] = seconds
    busy = values.pop("busy", _BUSY)
    limits: dict[str, Any] = {name: seconds or None for name, seconds in values.items()}
    return base + (f"?{urlencode(kept)}" if kept else ""), Timeouts(busy=busy, **limits)


class Database(abc.ABC):
    """A connection (SQLite) or a pool (PostgreSQL), opened by :meth:`connect`."""

    dialect: Dialect
    url: str

    @staticmethod
    async def connect(url: str, *, min_size: int = 1, max_size: int = 10) -> Database:
        """Open ``sqlite:///path`` (``sqlite://:memory:`` for a private in-memory
        database) or ``postgresql://user:password@host:port/database``, with the
        timeout options of the module docs as query parameters, e.g.
        ``postgresql://app@db/shop?command_timeout=10&connect_timeout=5``."""
        scheme = urlsplit(url).scheme.lower()
        db: Database
        if scheme == "sqlite":
            from eventbus.patterns._sqlite import SQLiteDatabase

            db = SQLiteDatabase(url)
        elif scheme in ("postgresql", "postgres"):
            from eventbus.patterns._postgres import PostgresDatabase

            db = PostgresDatabase(url, min_size, max_size)
        else:
            raise ConfigurationError(
                f"unsupported database URL {mask_url(url)!r}: use sqlite:///path/to/file.db "
                "or postgresql://user:password@host:5432/database"
            )
        await db._open()
        return db

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect (SQLite) or create the pool (PostgreSQL)."""

    @abc.abstractmethod
    def transaction(self) -> Any:
        """``async with db.transaction() as tx:`` commits on exit, rolls back on error.

        Opened inside another transaction of this database by the same task, it
        joins it on SQLite (a savepoint: its error rolls back only its own
        statements; its writes commit with the outer transaction); on PostgreSQL
        it is a transaction of its own on another pooled connection.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection or the pool."""

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def real_type(dialect: str) -> str:
    """The column type of a floating-point number (a time, a duration) in ``dialect``."""
    return "DOUBLE PRECISION" if dialect == "postgres" else "REAL"


def blob_type(dialect: str) -> str:
    """The column type of bytes in ``dialect``."""
    return "BYTEA" if dialect == "postgres" else "BLOB"


def sqlite_sql(sql: str) -> str:
    """``$n`` placeholders in SQLite's numbered form."""
    return _PLACEHOLDER.sub(r"?\1", sql)


# -- what a driver error means ---------------------------------------------------------

# SQLite result codes of statements refused for what they say (syntax, unknown
# table or column, type mismatch, too big); the others (BUSY, LOCKED, IOERR, FULL,
# CANTOPEN, NOMEM, INTERRUPT, CORRUPT, READONLY...) are the database's state.
_SQLITE_STATEMENT = ("SQLITE_ERROR", "SQLITE_MISMATCH", "SQLITE_TOOBIG", "SQLITE_RANGE")
_SQLITE_UNIQUE = ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")

# PostgreSQL SQLSTATE classes (the first two characters) of statements refused for
# what they say; every other class (connection, resources, locks, serialization,
# shutdown, timeouts, internal errors) is the database's state.
_PG_STATEMENT = {"09", "0A", "21", "22", "26", "27", "2F", "34", "38", "39", "3F", "42", "54", "P0"}
_PG_INTEGRITY = {"23", "44"}
_PG_INFRA_CODES = {"42501"}  # insufficient privilege: the deployment, not the message


def sqlite_error(exc: BaseException, what: str = "SQLite") -> SQLError:
    """The :class:`SQLError` for an exception of sqlite3/aiosqlite."""
    import sqlite3

    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = f"{what}: {type(exc).__name__}: {exc}"
    if name in _SQLITE_UNIQUE:
        return UniqueViolationError(text)
    if name.startswith("SQLITE_CONSTRAINT") or (
        not name and isinstance(exc, sqlite3.IntegrityError)
    ):
        return IntegrityError(text)
    if name.startswith(_SQLITE_STATEMENT):
        return StatementError(text)
    if name:
        return DatabaseError(text)
    closed = "closed" in str(exc) or "no active connection" in str(exc)
    if (
        isinstance(
            exc,
            sqlite3.ProgrammingError | sqlite3.InterfaceError | sqlite3.DataError | OverflowError,
        )
        and not closed
    ):
        return StatementError(text)  # binding errors: wrong arguments for the statement
    return DatabaseError(text)


def postgres_error(exc: BaseException, where: str = "PostgreSQL") -> SQLError:
    """The :class:`SQLError` for an exception of asyncpg (or of the socket under it)."""
    text = f"{where}: {type(exc).__name__}: {exc}"
    state = str(getattr(exc, "sqlstate", "") or "")
    if state == "23505":
        return UniqueViolationError(text)
    if state[:2] in _PG_INTEGRITY:
        return IntegrityError(text)
    if state[:2] in _PG_STATEMENT and state not in _PG_INFRA_CODES:
        return StatementError(text)
    if isinstance(exc, TimeoutError):
        return DatabaseError(
            f"{where} did not answer in time (raise command_timeout in "
            f"the URL if the statement is slow by nature): {exc or 'timeout'}"
        )
    if not state and "argument" in str(exc) and not isinstance(exc, OSError):
        return StatementError(text)  # the client refused the arguments (count, type)
    return DatabaseError(text)


# Renamed for one vocabulary (exceptions end in Error, SQL in capitals); the old
# spelling warns for one release.
_RENAMED: Renamed = {
    "UniqueViolation": ("eventbus.patterns.sql.UniqueViolationError", lambda: UniqueViolationError)
}


def __getattr__(name: str) -> Any:
    return renamed(__name__, name, _RENAMED)
