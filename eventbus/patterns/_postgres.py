"""PostgreSQL for :mod:`eventbus.patterns.sql`: an asyncpg pool with timeouts.

Why every wait has a limit: a network path that stops answering without a reset
(a black-holed route, a frozen host) leaves a socket waiting forever, and a loop
waiting on it (a relay, a projection) looks healthy while it does nothing. Each
statement is bounded by ``command_timeout``, connecting by ``connect_timeout``,
and the ``BEGIN`` opening each transaction is a ping bounded by ``ping_timeout``:
a pooled connection that does not answer it is dropped and the transaction
starts on a fresh one (once), before anything was written. A transaction whose
task is cancelled drops its connection at once (the server rolls back a session
that goes away) so that stopping never waits on a dead link.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    postgres_error,
    split_options,
)

try:
    import asyncpg

    _DRIVER_ERRORS: tuple[type[BaseException], ...] = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    )
except ImportError:  # pragma: no cover - depends on the install
    asyncpg = None
    _DRIVER_ERRORS = (OSError, TimeoutError)


def _drop(conn: Any) -> None:
    """Close ``conn`` at once, without a goodbye to the server (which rolls back what
    it had open); a connection the pool took back already is left alone."""
    with contextlib.suppress(Exception):
        conn.terminate()


class _PostgresTx:
    dialect: Dialect = "postgres"

    def __init__(self, conn: Any, where: str) -> None:
        self._conn = conn
        self._where = where

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status: str = await self._conn.execute(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise postgres_error(exc, self._where) from exc
        # "INSERT 0 3", "UPDATE 2", "DELETE 1", "CREATE TABLE"...
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            await self._conn.executemany(sql, rows)
        except _DRIVER_ERRORS as exc:
            raise postgres_error(exc, self._where) from exc

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            return [tuple(row) for row in await self._conn.fetch(sql, *args)]
        except _DRIVER_ERRORS as exc:
            raise postgres_error(exc, self._where) from exc

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            row = await self._conn.fetchrow(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise postgres_error(exc, self._where) from exc
        return None if row is None else tuple(row)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self._conn.fetchval(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise postgres_error(exc, self._where) from exc


class PostgresDatabase(Database):
    """A PostgreSQL database through an asyncpg pool (timeouts: :mod:`eventbus.patterns.sql`)."""

    dialect: Dialect = "postgres"

    def __init__(self, url: str, min_size: int, max_size: int) -> None:
        self.url = url
        self._dsn, self.timeouts = split_options(url)
        self._sizes = (min_size, max_size)
        self._pool: Any = None
        parts = urlsplit(url)
        self._where = f"PostgreSQL at {parts.hostname or 'localhost'}:{parts.port or 5432}"

    async def _open(self) -> None:
        if asyncpg is None:  # pragma: no cover - depends on the install
            raise ConfigurationError("PostgreSQL needs asyncpg: pip install 'eventbus[postgres]'")
        limits = self.timeouts
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._sizes[0],
                max_size=self._sizes[1],
                command_timeout=limits.command,
                timeout=limits.connect or 3600.0,
                max_inactive_connection_lifetime=limits.idle or 0.0,
            )
        except _DRIVER_ERRORS as exc:
            raise DatabaseError(
                f"cannot connect to {self._where} ({mask_url(self.url)}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        conn = await self._begin()
        try:
            yield _PostgresTx(conn, self._where)
        except asyncio.CancelledError:
            _drop(conn)
            raise
        except BaseException as exc:
            await self._rollback(conn)
            if isinstance(exc, _DRIVER_ERRORS):
                raise postgres_error(exc, self._where) from exc
            raise
        else:
            try:
                await conn.execute("COMMIT")
            except asyncio.CancelledError:
                _drop(conn)
                raise
            except _DRIVER_ERRORS as exc:
                error = postgres_error(exc, f"{self._where}: COMMIT")
                if isinstance(error, DatabaseError):
                    _drop(conn)  # the link is in doubt: never reuse it
                raise error from exc
        finally:
            await self._release(conn)

    async def _begin(self) -> Any:
        """A pooled connection with a transaction open. The BEGIN is the pre-ping: a
        connection found dead (closed, reset) is dropped and the transaction starts
        on a fresh one, once; one that does not answer within ``ping_timeout`` is
        dropped and the transaction fails at once (a silent network is not fixed
        by waiting again on a new connection)."""
        pool = self._pool
        if pool is None:
            raise DatabaseError(f"database {mask_url(self.url)} is closed; connect again")
        for attempt in (1, 2):
            try:
                conn = await pool.acquire(timeout=self.timeouts.command)
            except _DRIVER_ERRORS as exc:
                raise DatabaseError(
                    f"no connection to {self._where} ({type(exc).__name__}: "
                    f"{exc or 'timed out'}); it is down or every pooled connection is busy"
                ) from exc
            try:
                await conn.execute("BEGIN", timeout=self.timeouts.ping)
                return conn
            except asyncio.CancelledError:
                _drop(conn)
                raise
            except TimeoutError as exc:
                _drop(conn)
                raise DatabaseError(
                    f"{self._where} did not answer a BEGIN within ping_timeout="
                    f"{self.timeouts.ping}s; the server or the network to it is down "
                    "or overloaded"
                ) from exc
            except _DRIVER_ERRORS as exc:
                _drop(conn)
                if attempt == 2:
                    raise postgres_error(exc, self._where) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _rollback(self, conn: Any) -> None:
        try:
            await conn.execute("ROLLBACK", timeout=self.timeouts.ping)
        except asyncio.CancelledError:
            _drop(conn)
            raise
        except _DRIVER_ERRORS:
            _drop(conn)  # the server rolls back a session that goes away

    async def _release(self, conn: Any) -> None:
        pool = self._pool
        if pool is None:  # closed meanwhile
            _drop(conn)
            return
        with contextlib.suppress(*_DRIVER_ERRORS):
            # A connection that cannot be reset in time is terminated by asyncpg.
            await pool.release(conn, timeout=self.timeouts.ping)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                # Transactions still running get command_timeout to end.
                await asyncio.wait_for(pool.close(), self.timeouts.command)
            except _DRIVER_ERRORS:  # TimeoutError among them
                pool.terminate()
