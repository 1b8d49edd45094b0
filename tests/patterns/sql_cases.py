"""The database layer's behaviour, shared by the SQLite (here) and PostgreSQL runs."""

from __future__ import annotations

import asyncio

import pytest

from eventbus.patterns.sql import Database, DatabaseError, UniqueViolation


async def check_round_trip(url: str) -> None:
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        async with db.transaction() as tx:
            assert await tx.execute("INSERT INTO t (id, n) VALUES ($1, $2)", "a", 1) == 1
            await tx.executemany("INSERT INTO t (id, n) VALUES ($1, $2)", [("b", 2), ("c", 3)])
        async with db.transaction() as tx:
            assert await tx.fetch("SELECT id, n FROM t WHERE n >= $1 ORDER BY n", 2) == [
                ("b", 2), ("c", 3)]
            assert await tx.fetchrow("SELECT n FROM t WHERE id = $1", "zz") is None
            assert await tx.fetchval("SELECT count(*) FROM t") == 3
            assert await tx.execute("UPDATE t SET n = n + $1 WHERE n > $2", 10, 1) == 2


async def check_rollback_and_unique(url: str) -> None:
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE u (id TEXT PRIMARY KEY)")
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO u (id) VALUES ($1)", "x")
                raise RuntimeError("boom")
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT count(*) FROM u") == 0
            await tx.execute("INSERT INTO u (id) VALUES ($1)", "x")
        with pytest.raises(UniqueViolation):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO u (id) VALUES ($1)", "y")
                await tx.execute("INSERT INTO u (id) VALUES ($1)", "x")
        async with db.transaction() as tx:  # the whole failed transaction rolled back
            assert await tx.fetch("SELECT id FROM u") == [("x",)]


async def check_concurrent_transactions(url: str) -> None:
    """Concurrent read-modify-write transactions never lose an update."""
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE c (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
            await tx.execute("INSERT INTO c (id, n) VALUES ('k', 0)")

        async def bump() -> None:
            async with db.transaction() as tx:
                lock = " FOR UPDATE" if tx.dialect == "postgres" else ""
                n = await tx.fetchval(f"SELECT n FROM c WHERE id = 'k'{lock}")
                await asyncio.sleep(0)
                await tx.execute("UPDATE c SET n = $1 WHERE id = 'k'", n + 1)

        await asyncio.gather(*(bump() for _ in range(20)))
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT n FROM c") == 20


async def check_errors_are_ours(url: str) -> None:
    """A statement the database refuses raises DatabaseError on either database,
    and a caller's own exception inside the block passes through as itself."""
    async with await Database.connect(url) as db:
        with pytest.raises(DatabaseError) as info:
            async with db.transaction() as tx:
                await tx.execute("SELECT * FROM no_such_table")
        assert not isinstance(info.value, UniqueViolation)
        with pytest.raises(KeyError):
            async with db.transaction() as tx:
                raise KeyError("mine")
