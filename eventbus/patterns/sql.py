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
transaction holds the connection until it ends.
"""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from eventbus.errors import ConfigurationError, InfrastructureError

Dialect = Literal["sqlite", "postgres"]
Row = tuple[Any, ...]

_PLACEHOLDER = re.compile(r"\$(\d+)")


class DatabaseError(InfrastructureError):
    """The database refused or lost a statement (not a conflict the caller expects)."""


class UniqueViolation(DatabaseError):
    """A unique constraint rejected a row (the database's answer to a race)."""


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


class Database(abc.ABC):
    """A connection (SQLite) or a pool (PostgreSQL), opened by :meth:`connect`."""

    dialect: Dialect
    url: str

    @staticmethod
    async def connect(url: str, *, min_size: int = 1, max_size: int = 10) -> Database:
        """Open ``sqlite:///path`` (``sqlite://:memory:`` for a private in-memory
        database) or ``postgresql://user:password@host:port/database``."""
        scheme = urlsplit(url).scheme.lower()
        if scheme == "sqlite":
            db: Database = _SQLite(url)
        elif scheme in ("postgresql", "postgres"):
            db = _Postgres(url, min_size, max_size)
        else:
            raise ConfigurationError(
                f"unsupported database URL {url!r}: use sqlite:///path/to/file.db "
                "or postgresql://user:password@host:5432/database"
            )
        await db._open()
        return db

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect (SQLite) or create the pool (PostgreSQL)."""

    @abc.abstractmethod
    def transaction(self) -> Any:
        """``async with db.transaction() as tx:`` commits on exit, rolls back on error."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection or the pool."""

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _SQLiteTx:
    dialect: Dialect = "sqlite"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._conn.execute(_sqlite_sql(sql), args) as cursor:
            return int(cursor.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(_sqlite_sql(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._conn.execute(_sqlite_sql(sql), args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._conn.execute(_sqlite_sql(sql), args) as cursor:
            row = await cursor.fetchone()
            return None if row is None else tuple(row)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]


def _sqlite_sql(sql: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", sql)


class _SQLite(Database):
    dialect: Dialect = "sqlite"

    def __init__(self, url: str, busy_timeout: float = 30.0) -> None:
        self.url = url
        parts = urlsplit(url)
        # As SQLAlchemy reads them: sqlite:///relative.db, sqlite:////absolute/path.db.
        path = parts.netloc if parts.netloc == ":memory:" else parts.path[1:]
        self._path = ":memory:" if path in (":memory:", "") else path
        self._busy = busy_timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _open(self) -> None:
        import aiosqlite

        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            self._conn = await aiosqlite.connect(
                self._path, timeout=self._busy, isolation_level=None
            )
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute("PRAGMA foreign_keys=ON")
        except Exception as exc:
            raise DatabaseError(f"cannot open SQLite database {self._path!r}: {exc}") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        import sqlite3

        async with self._lock:
            conn = self._conn
            if conn is None:
                raise DatabaseError(f"database {self.url} is closed")
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTx(conn)
            except sqlite3.IntegrityError as exc:
                await conn.execute("ROLLBACK")
                if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
                    raise UniqueViolation(str(exc)) from exc
                raise DatabaseError(str(exc)) from exc
            except sqlite3.Error as exc:
                await conn.execute("ROLLBACK")
                raise DatabaseError(f"SQLite: {type(exc).__name__}: {exc}") from exc
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            else:
                await conn.execute("COMMIT")

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()


class _Postgres(Database):
    dialect: Dialect = "postgres"

    def __init__(self, url: str, min_size: int, max_size: int) -> None:
        self.url = url
        self._sizes = (min_size, max_size)
        self._pool: Any = None

    async def _open(self) -> None:
        try:
            import asyncpg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "PostgreSQL needs asyncpg: pip install 'eventbus[postgres]'"
            ) from exc
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=self._sizes[0], max_size=self._sizes[1]
            )
        except (OSError, asyncpg.PostgresError) as exc:
            safe = urlsplit(self.url)._replace(netloc=urlsplit(self.url).hostname or "").geturl()
            raise DatabaseError(f"cannot connect to PostgreSQL at {safe}: {exc}") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        import asyncpg

        if self._pool is None:
            raise DatabaseError("database is closed")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield _PostgresTx(conn)
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # The driver's own errors become ours, as on SQLite; a caller's own
            # exception raised inside the block passes through untouched.
            raise DatabaseError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


class _PostgresTx:
    dialect: Dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._conn.execute(sql, *args)
        # "INSERT 0 3", "UPDATE 2", "DELETE 1", "CREATE TABLE"...
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [tuple(row) for row in await self._conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = await self._conn.fetchrow(sql, *args)
        return None if row is None else tuple(row)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(sql, *args)
