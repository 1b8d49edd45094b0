"""SQLite idempotency store (aiosqlite): shared by processes on one host through a file."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import aiosqlite

from eventbus.middleware.idempotency import Claim, ClaimResult, new_owner

_SCHEMA = """
CREATE TABLE IF NOT EXISTS eventbus_idempotency (
    key TEXT PRIMARY KEY,
    done INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
)
"""
_INDEX = (
    "CREATE INDEX IF NOT EXISTS eventbus_idempotency_expires ON eventbus_idempotency (expires_at)"
)


class SQLiteIdempotencyStore:
    """Claims are one atomic upsert, so two processes never both claim an id.

    Expired rows (ended leases, done ids past their TTL) are deleted at most every
    ``purge_interval`` seconds, on a claim, so the file does not grow forever.
    The bus closes the store when it stops; :meth:`close` it yourself if you use
    it on its own (its connection thread would keep the process alive).

    ::

        store = SQLiteIdempotencyStore("idempotency.db")
        bus = EventBus.from_env(idempotency=store)
    """

    def __init__(self, path: str, *, purge_interval: float = 60.0) -> None:
        self.path = path
        self.purge_interval = purge_interval
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._next_purge = 0.0

    async def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            # Autocommit: every claim is one atomic statement, so no transaction is
            # ever held open between statements, and the busy timeout covers the
            # moments another process is writing (including its first set-up).
            db = await aiosqlite.connect(self.path, timeout=30, isolation_level=None)
            try:
                await _set_up(db)
            except BaseException:
                await db.close()
                raise
            self._db = db
        return self._db

    async def claim(self, key: str, lease: float) -> ClaimResult:
        # Wall-clock time: expiries must mean the same in every process sharing the file.
        now = time.time()
        owner = new_owner()
        async with self._lock:
            db = await self._conn()
            if time.monotonic() >= self._next_purge:
                await self._purge(db, now)
            async with db.execute(
                "INSERT INTO eventbus_idempotency (key, done, expires_at, owner) "
                "VALUES (?, 0, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET done = 0, expires_at = excluded.expires_at, "
                "owner = excluded.owner WHERE eventbus_idempotency.expires_at <= ?",
                (key, now + lease, owner, now),
            ) as cursor:
                claimed = cursor.rowcount == 1
            if claimed:
                return ClaimResult(Claim.CLAIMED, owner)
            async with db.execute(
                "SELECT done FROM eventbus_idempotency WHERE key = ?", (key,)
            ) as rows:
                row = await rows.fetchone()
        return ClaimResult(Claim.DONE if row is not None and row[0] else Claim.IN_PROGRESS)

    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        expires = time.time() + ttl
        async with self._lock:
            db = await self._conn()
            async with db.execute(
                "UPDATE eventbus_idempotency SET done = 1, expires_at = ? "
                "WHERE key = ? AND owner = ? AND done = 0",
                (expires, key, owner),
            ) as cursor:
                if cursor.rowcount == 1:
                    return True
            # Someone else holds it now, or the row expired and was purged: the effect
            # happened all the same, so the id is done.
            await db.execute_fetchall(
                "INSERT INTO eventbus_idempotency (key, done, expires_at, owner) "
                "VALUES (?, 1, ?, ?) ON CONFLICT(key) DO UPDATE SET done = 1, "
                "expires_at = excluded.expires_at, owner = excluded.owner",
                (key, expires, owner),
            )
        return False

    async def release(self, key: str, owner: str) -> bool:
        async with self._lock:
            db = await self._conn()
            async with db.execute(
                "DELETE FROM eventbus_idempotency WHERE key = ? AND owner = ? AND done = 0",
                (key, owner),
            ) as cursor:
                return cursor.rowcount == 1

    async def purge(self) -> int:
        """Delete every expired row now; returns how many went."""
        async with self._lock:
            return await self._purge(await self._conn(), time.time())

    async def _purge(self, db: aiosqlite.Connection, now: float) -> int:
        self._next_purge = time.monotonic() + self.purge_interval
        async with db.execute(
            "DELETE FROM eventbus_idempotency WHERE expires_at <= ?", (now,)
        ) as cursor:
            return cursor.rowcount

    async def close(self) -> None:
        """Close the database connection (and its thread); a later call reopens it."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()


async def _set_up(db: aiosqlite.Connection) -> None:
    await db.execute_fetchall("PRAGMA busy_timeout = 30000")
    # Switching to WAL takes an exclusive lock and SQLite reports "locked" at
    # once, without its busy handler, when another process is setting up too.
    for attempt in range(50):
        try:
            # execute_fetchall also closes the cursor: an unfinished PRAGMA
            # statement would hold a shared lock and block other processes.
            await db.execute_fetchall("PRAGMA journal_mode=WAL")
            await db.execute_fetchall(_SCHEMA)
            await _add_owner_column(db)
            await db.execute_fetchall(_INDEX)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            await asyncio.sleep(0.02 * (attempt + 1))


async def _add_owner_column(db: aiosqlite.Connection) -> None:
    """Files written before claims had owners lack the column; add it once."""
    columns = await db.execute_fetchall("PRAGMA table_info(eventbus_idempotency)")
    if any(column[1] == "owner" for column in columns):
        return
    try:
        await db.execute_fetchall(
            "ALTER TABLE eventbus_idempotency ADD COLUMN owner TEXT NOT NULL DEFAULT ''"
        )
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another process added it first
            raise
