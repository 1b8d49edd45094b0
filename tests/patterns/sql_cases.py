"""The database layer's behaviour, shared by the SQLite (here) and PostgreSQL runs."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from eventbus import Command, EventBus, RetryPolicy
from eventbus.errors import ConfigurationError, InfrastructureError
from eventbus.patterns.sql import (
    Database,
    DatabaseError,
    IntegrityError,
    Row,
    SQLError,
    StatementError,
    UniqueViolationError,
)
from eventbus.requests import RequestFailedError


class Debit(Command, type="sql-test.debit", topic="sql-test.debits"):
    cents: int


async def check_round_trip(url: str) -> None:
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        async with db.transaction() as tx:
            assert await tx.execute("INSERT INTO t (id, n) VALUES ($1, $2)", "a", 1) == 1
            await tx.executemany("INSERT INTO t (id, n) VALUES ($1, $2)", [("b", 2), ("c", 3)])
        async with db.transaction() as tx:
            assert await tx.fetch("SELECT id, n FROM t WHERE n >= $1 ORDER BY n", 2) == [
                ("b", 2),
                ("c", 3),
            ]
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
        with pytest.raises(UniqueViolationError):
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
    """A statement the database refuses raises sql.py's own error on either database,
    and a caller's own exception inside the block passes through as itself."""
    async with await Database.connect(url) as db:
        with pytest.raises(SQLError) as info:
            async with db.transaction() as tx:
                await tx.execute("SELECT * FROM no_such_table")
        assert not isinstance(info.value, UniqueViolationError)
        with pytest.raises(KeyError):
            async with db.transaction() as tx:
                raise KeyError("mine")


async def check_refused_statements_are_not_infrastructure(url: str) -> None:
    """Defect 5: a statement that can never succeed (a CHECK, NOT NULL or foreign key
    violation, invalid data, unknown SQL) raises a StatementError, which the bus
    counts as a handler failure, not an InfrastructureError it would redeliver
    forever. Inside the block the error is already ours, so a caller can catch it."""
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute(
                "CREATE TABLE acct (id TEXT PRIMARY KEY, cents INTEGER NOT NULL CHECK (cents >= 0))"
            )
            await tx.execute("CREATE TABLE line (acct TEXT NOT NULL REFERENCES acct (id))")
            await tx.execute("INSERT INTO acct VALUES ('a', 1)")
        refused = {
            "check": ("UPDATE acct SET cents = -5", IntegrityError),
            "not null": ("INSERT INTO acct VALUES ('b', NULL)", IntegrityError),
            "foreign key": ("INSERT INTO line VALUES ('nobody')", IntegrityError),
            "unique": ("INSERT INTO acct VALUES ('a', 2)", UniqueViolationError),
            "unknown table": ("SELECT * FROM no_such_table", StatementError),
            "syntax": ("SELEKT 1", StatementError),
        }
        if db.dialect == "postgres":
            refused["invalid data"] = ("SELECT 'abc'::integer", StatementError)
        for name, (sql, expected) in refused.items():
            with pytest.raises(expected) as info:
                async with db.transaction() as tx:
                    await tx.execute(sql)
            assert not isinstance(info.value, InfrastructureError), name
            assert isinstance(info.value, SQLError), name
        async with db.transaction() as tx:  # caught inside the block, as ours
            try:
                await tx.execute("INSERT INTO acct VALUES ('a', 3)")
            except UniqueViolationError:
                pass
            else:
                raise AssertionError("the duplicate was accepted")


async def check_refused_statement_is_dead_lettered(url: str) -> None:
    """Defect 5, as a user sees it: a handler whose statement violates a CHECK is
    retried up to the policy, then dead-lettered, and its requester gets an error
    reply (not a redelivery forever and a request timing out)."""
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute(
                "CREATE TABLE acct (id TEXT PRIMARY KEY, cents INTEGER NOT NULL CHECK (cents >= 0))"
            )
            await tx.execute("INSERT INTO acct VALUES ('a', 100)")
        bus = EventBus(
            f"memory://sql-{uuid.uuid4().hex[:8]}",
            source="ledger",
            retry=RetryPolicy(max_attempts=2, in_process_attempts=1, initial_delay=0.01),
        )
        runs = 0
        dead = asyncio.Event()

        @bus.subscribe(Debit, group="ledger")
        async def debit(command: Debit) -> str:
            nonlocal runs
            runs += 1
            async with db.transaction() as tx:
                await tx.execute("UPDATE acct SET cents = cents - $1 WHERE id = 'a'", command.cents)
            return "debited"

        @bus.subscribe(f"{Debit.default_topic()}.ledger.dlq", group="ops")
        async def dead_letter(message: Debit) -> None:
            dead.set()

        async with bus:
            with pytest.raises(RequestFailedError) as info:
                await bus.request(Debit(cents=500), timeout=10)
            assert info.value.error_type == "IntegrityError"
            await asyncio.wait_for(dead.wait(), timeout=5)
        assert runs == 2


async def check_busy_database_is_infrastructure(url: str) -> None:
    """Defect 5, the other side: a lock that does not come free in time is the
    database's state, not the message's: DatabaseError, an InfrastructureError."""
    if url.startswith("sqlite"):
        sep = "&" if "?" in url else "?"

        async def insert(waiter: Database) -> None:  # another process, in effect
            async with waiter.transaction() as other:
                await other.execute("INSERT INTO busy VALUES (1)")

        async with (
            await Database.connect(url) as holder,
            await Database.connect(f"{url}{sep}busy_timeout=0.1") as waiter,
            holder.transaction() as tx,
        ):
            await tx.execute("CREATE TABLE busy (n INTEGER)")
            with pytest.raises(DatabaseError) as info:
                await asyncio.create_task(insert(waiter))
        assert isinstance(info.value, InfrastructureError)
        return
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE busy (n INTEGER)")
        async with db.transaction() as tx:
            await tx.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(DatabaseError) as info:
                async with db.transaction() as other:
                    await other.execute("SET LOCAL lock_timeout = '100ms'")
                    await other.execute("INSERT INTO busy VALUES (1)")
        assert isinstance(info.value, InfrastructureError)


async def check_nested_transaction_does_not_hang(url: str) -> None:
    """Defect 13: a transaction opened inside another by the same task (an inbox
    handler loading an aggregate from a store on the same database) completes
    instead of waiting for the lock its own transaction holds."""
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE n (v TEXT PRIMARY KEY)")
            await tx.execute("INSERT INTO n VALUES ('committed')")

        async def nested() -> list[Row]:
            async with db.transaction() as outer:
                await outer.execute("INSERT INTO n VALUES ('outer')")
                async with db.transaction() as inner:
                    rows = await inner.fetch("SELECT v FROM n ORDER BY v")
                    await inner.execute("INSERT INTO n VALUES ('inner')")
                with pytest.raises(UniqueViolationError):
                    async with db.transaction() as failing:
                        await failing.execute("INSERT INTO n VALUES ('lost')")
                        await failing.execute("INSERT INTO n VALUES ('committed')")
                return rows

        seen = await asyncio.wait_for(nested(), timeout=5)
        assert ("committed",) in seen
        async with db.transaction() as tx:
            final = {row[0] for row in await tx.fetch("SELECT v FROM n")}
        assert final == {"committed", "outer", "inner"}


async def check_options_are_not_server_settings(url: str) -> None:
    """Defect 14: the timeouts are URL options of eventbus (not passed on to the
    driver), and a value that is not a number is refused with the option named."""
    sep = "&" if "?" in url else "?"
    tuned = (
        f"{url}{sep}command_timeout=5&connect_timeout=5&idle_timeout=60"
        "&ping_timeout=2&busy_timeout=5"
    )
    async with await Database.connect(tuned) as db, db.transaction() as tx:
        assert await tx.fetchval("SELECT 1") == 1
    with pytest.raises(ConfigurationError, match="command_timeout"):
        await Database.connect(f"{url}{sep}command_timeout=soon")
