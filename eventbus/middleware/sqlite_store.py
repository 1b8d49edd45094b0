"""SQLite idempotency store (aiosqlite): shared by processes on one host through a file."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import aiosqlite

from eventbus.middleware.idempotency import Claim

_SCHEMA = """
CREATE TABLE IF NOT EXISTS eventbus_idempotency (
    key TEXT PRIMARY KEY,
    done INTEGER NOT NULL,
    expires_at REAL NOT NULL
)
"""


class SQLiteIdempotencyStore:
    """Claims are one atomic upsert, so two processes never both claim an id.

    ::

        store = SQLiteIdempotencyStore("idempotency.db")
        bus = EventBus.from_env(idempotency=store)
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            # Autocommit: every claim is one atomic statement, so no transaction is
            # ever held open between statements, and the busy timeout covers the
            # moments another process is writing (including its first set-up).
            db = await aiosqlite.connect(self.path, timeout=30, isolation_level=None)
            await db.execute_fetchall("PRAGMA busy_timeout = 30000")
            # Switching to WAL takes an exclusive lock and SQLite reports "locked" at
            # once, without its busy handler, when another process is setting up too.
            for attempt in range(50):
                try:
                    # execute_fetchall also closes the cursor: an unfinished PRAGMA
                    # statement would hold a shared lock and block other processes.
                    await db.execute_fetchall("PRAGMA journal_mode=WAL")
                    await db.execute_fetchall(_SCHEMA)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 49:
                        await db.close()
                        raise
                    await asyncio.sleep(0.02 * (attempt + 1))
            self._db = db
        return self._db

    async def claim(self, key: str, lease: float) -> Claim:
        # Wall-clock time: expiries must mean the same in every process sharing the file.
        now = time.time()
        async with self._lock:
            db = await self._conn()
            async with db.execute(
                "INSERT INTO eventbus_idempotency (key, done, expires_at) VALUES (?, 0, ?) "
                "ON CONFLICT(key) DO UPDATE SET done = 0, expires_at = excluded.expires_at "
                "WHERE eventbus_idempotency.expires_at <= ?",
                (key, now + lease, now),
            ) as cursor:
                claimed = cursor.rowcount == 1
            if claimed:
                return Claim.CLAIMED
            async with db.execute(
                "SELECT done FROM eventbus_idempotency WHERE key = ?", (key,)
            ) as rows:
                row = await rows.fetchone()
        return Claim.DONE if row is not None and row[0] else Claim.IN_PROGRESS

    async def complete(self, key: str, ttl: float) -> None:
        async with self._lock:
            db = await self._conn()
            await db.execute_fetchall(
                "UPDATE eventbus_idempotency SET done = 1, expires_at = ? WHERE key = ?",
                (time.time() + ttl, key),
            )

    async def release(self, key: str) -> None:
        async with self._lock:
            db = await self._conn()
            await db.execute_fetchall(
                "DELETE FROM eventbus_idempotency WHERE key = ? AND done = 0", (key,)
            )

    async def close(self) -> None:
        """Close the database connection."""
        if self._db is not None:
            await self._db.close()
            self._db = None
