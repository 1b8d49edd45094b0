"""SQLite for :mod:`eventbus.patterns.sql`: one aiosqlite connection per Database.

Why the care around ``BEGIN IMMEDIATE``: aiosqlite runs every statement in its
own thread, in the order they were queued. A task cancelled while its BEGIN
waits for another connection's write lock stops waiting, but the BEGIN still
runs in the thread and may open a transaction nobody will end: the connection
would hold the file's write lock for good and refuse every later BEGIN. So a
cancelled BEGIN keeps the connection's lock until a ROLLBACK queued behind it
has undone it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from eventbus.errors import ConfigurationError, mask_url
from eventbus.patterns.sql import (
    Database,
    DatabaseError,
    Dialect,
    Row,
    Transaction,
    split_options,
    sqlite_error,
    sqlite_sql,
)

# What sqlite3 and aiosqlite raise for a statement (ValueError: a closed connection;
# OverflowError: an int too large to bind).
_DRIVER_ERRORS = (sqlite3.Error, ValueError, OverflowError)

# The task holding each file's write transaction, across the Database objects of this
# process: SQLite has one writer per file, so a task opening a second transaction
# on the same file through another connection would wait for itself.
_WRITERS: dict[str, asyncio.Task[Any]] = {}


class _SQLiteTx:
    dialect: Dialect = "sqlite"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            async with self._conn.execute(sqlite_sql(sql), args) as cursor:
                return int(cursor.rowcount)
        except _DRIVER_ERRORS as exc:
            raise sqlite_error(exc) from exc

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            await self._conn.executemany(sqlite_sql(sql), rows)
        except _DRIVER_ERRORS as exc:
            raise sqlite_error(exc) from exc

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            # One trip to aiosqlite's thread, where a cursor's execute, fetchall and
            # close are three: each trip is a thread hand-off (~0.1 ms, more under load).
            rows = await self._conn.execute_fetchall(sqlite_sql(sql), args)
        except _DRIVER_ERRORS as exc:
            raise sqlite_error(exc) from exc
        return [tuple(row) for row in rows]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            async with self._conn.execute(sqlite_sql(sql), args) as cursor:
                row = await cursor.fetchone()
                return None if row is None else tuple(row)
        except _DRIVER_ERRORS as exc:
            raise sqlite_error(exc) from exc

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]


async def _run(conn: Any, sql: str) -> None:
    cursor = await conn.execute(sql)
    await cursor.close()


async def _run_mapped(conn: Any, sql: str) -> None:
    """:func:`_run`, a driver error raised as the :class:`SQLError` it means."""
    try:
        await _run(conn, sql)
    except _DRIVER_ERRORS as exc:
        raise sqlite_error(exc) from exc


def sqlite_path(url: str) -> str:
    """The file a ``sqlite://`` URL names, or ``":memory:"``."""
    parts = urlsplit(split_options(url)[0])
    # As SQLAlchemy reads them: sqlite:///relative.db, sqlite:////absolute/path.db.
    path = parts.netloc if parts.netloc == ":memory:" else parts.path[1:]
    return ":memory:" if path in (":memory:", "") else path


class SQLiteDatabase(Database):
    """A SQLite file (or ``:memory:``) through one aiosqlite connection."""

    dialect: Dialect = "sqlite"

    def __init__(self, url: str) -> None:
        self.url = url
        self._path = sqlite_path(url)
        timeouts = split_options(url)[1]
        self._file = "" if self._path == ":memory:" else os.path.realpath(self._path)
        self._busy = timeouts.busy
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None  # the task whose transaction is open
        self._depth = 0
        self._undoing: set[asyncio.Task[None]] = set()

    async def _open(self) -> None:
        import aiosqlite

        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            self._conn = await aiosqlite.connect(
                self._path, timeout=self._busy, isolation_level=None
            )
            await _run(self._conn, "PRAGMA journal_mode=WAL")
            await _run(self._conn, "PRAGMA foreign_keys=ON")
        except _DRIVER_ERRORS as exc:
            # A connection that opened but failed to set up (WAL needs the write lock,
            # which another connection may hold) is closed: its worker thread would
            # otherwise keep the process from exiting.
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await conn.close()
            raise DatabaseError(f"cannot open SQLite database {self._path!r}: {exc}") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            # The connection lock is this task's own: waiting for it would wait forever.
            async with self._savepoint() as nested:
                yield nested
            return
        if task is not None and self._file and _WRITERS.get(self._file) is task:
            raise ConfigurationError(
                f"this task already has a transaction open on SQLite file {self._path!r} "
                "through another Database object; SQLite has one writer per file, so this "
                "one would wait for it forever. Share one Database object (a transaction "
                "opened inside another of the same object joins it), or finish the first"
            )
        conn = await self._begin()
        self._owner = task
        if task is not None and self._file:
            _WRITERS[self._file] = task
        try:
            yield _SQLiteTx(conn)
        except BaseException as exc:
            self._release_writer(task)
            await self._end(conn, "ROLLBACK")
            if isinstance(exc, _DRIVER_ERRORS):
                raise sqlite_error(exc) from exc
            raise
        else:
            self._release_writer(task)
            await self._end(conn, "COMMIT")

    def _release_writer(self, task: asyncio.Task[Any] | None) -> None:
        self._owner = None
        if self._file and _WRITERS.get(self._file) is task:
            del _WRITERS[self._file]

    async def _begin(self) -> Any:
        """Take the connection lock and open a write transaction; returns the connection."""
        await self._lock.acquire()
        conn = self._conn
        if conn is None:
            self._lock.release()
            raise DatabaseError(f"database {mask_url(self.url)} is closed; connect again")
        begin = asyncio.ensure_future(_run(conn, "BEGIN IMMEDIATE"))
        try:
            await asyncio.shield(begin)
        except asyncio.CancelledError:
            undo = asyncio.ensure_future(self._undo_begin(conn, begin))
            self._undoing.add(undo)
            undo.add_done_callback(self._undoing.discard)
            raise
        except BaseException as exc:
            self._lock.release()
            if isinstance(exc, _DRIVER_ERRORS):
                raise sqlite_error(exc, f"SQLite {self._path!r}: BEGIN") from exc
            raise
        return conn

    async def _undo_begin(self, conn: Any, begin: asyncio.Future[None]) -> None:
        """After a cancelled BEGIN: let it finish, roll back what it opened, then free
        the connection for the next transaction."""
        try:
            try:
                await begin
            except BaseException:
                return  # it failed (busy): no transaction to undo
            with contextlib.suppress(*_DRIVER_ERRORS):
                await _run(conn, "ROLLBACK")
        finally:
            self._lock.release()

    async def _end(self, conn: Any, sql: str) -> None:
        """COMMIT or ROLLBACK, then free the connection (also when cancelled meanwhile:
        the statement is queued in aiosqlite's thread ahead of any later BEGIN)."""
        try:
            await _run(conn, sql)
        except _DRIVER_ERRORS as exc:
            if sql == "COMMIT":
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await _run(conn, "ROLLBACK")
                raise sqlite_error(exc, f"SQLite {self._path!r}: COMMIT") from exc
            # A failed ROLLBACK: SQLite already ended the transaction itself (an I/O
            # error, a full disk); nothing is left to undo.
        finally:
            self._lock.release()

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[Transaction]:
        """A transaction inside the task's open one: a savepoint, so its failure
        undoes only its own statements and its writes commit with the outer ones."""
        conn = self._conn
        self._depth += 1
        name = f"eventbus_nested_{self._depth}"
        try:
            await _run_mapped(conn, f"SAVEPOINT {name}")
            try:
                yield _SQLiteTx(conn)
            except BaseException as exc:
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await _run(conn, f"ROLLBACK TO {name}")
                    await _run(conn, f"RELEASE {name}")
                if isinstance(exc, _DRIVER_ERRORS):
                    raise sqlite_error(exc) from exc
                raise
            else:
                await _run_mapped(conn, f"RELEASE {name}")
        finally:
            self._depth -= 1

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
