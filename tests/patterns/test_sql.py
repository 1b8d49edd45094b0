"""The patterns' database layer on SQLite (PostgreSQL: integration_tests/patterns)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from eventbus.errors import ConfigurationError
from eventbus.patterns.sql import Database, DatabaseError
from tests.patterns import sql_cases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/db.sqlite"


@pytest.mark.asyncio
async def test_round_trip(sqlite_url: str) -> None:
    await sql_cases.check_round_trip(sqlite_url)


@pytest.mark.asyncio
async def test_rollback_and_unique(sqlite_url: str) -> None:
    await sql_cases.check_rollback_and_unique(sqlite_url)


@pytest.mark.asyncio
async def test_concurrent_transactions(sqlite_url: str) -> None:
    await sql_cases.check_concurrent_transactions(sqlite_url)


@pytest.mark.asyncio
async def test_in_memory_database() -> None:
    await sql_cases.check_round_trip("sqlite://:memory:")


@pytest.mark.asyncio
async def test_unknown_scheme_says_what_to_use() -> None:
    with pytest.raises(ConfigurationError, match="postgresql://"):
        await Database.connect("mysql://x/y")


@pytest.mark.asyncio
async def test_errors_are_ours(sqlite_url: str) -> None:
    await sql_cases.check_errors_are_ours(sqlite_url)


@pytest.mark.asyncio
async def test_refused_statements_are_not_infrastructure(sqlite_url: str) -> None:
    await sql_cases.check_refused_statements_are_not_infrastructure(sqlite_url)


@pytest.mark.asyncio
async def test_refused_statement_is_dead_lettered(sqlite_url: str) -> None:
    await sql_cases.check_refused_statement_is_dead_lettered(sqlite_url)


@pytest.mark.asyncio
async def test_busy_database_is_infrastructure(sqlite_url: str) -> None:
    await sql_cases.check_busy_database_is_infrastructure(sqlite_url)


@pytest.mark.asyncio
async def test_nested_transaction_does_not_hang(sqlite_url: str) -> None:
    await sql_cases.check_nested_transaction_does_not_hang(sqlite_url)


@pytest.mark.asyncio
async def test_options_are_not_server_settings(sqlite_url: str) -> None:
    await sql_cases.check_options_are_not_server_settings(sqlite_url)


@pytest.mark.asyncio
async def test_cancelled_while_waiting_to_begin_leaves_the_database_usable(sqlite_url: str) -> None:
    """Defect 2: a task cancelled while its BEGIN IMMEDIATE waits for another
    connection's write lock (a handler timeout) leaves no transaction open behind
    it: this Database works afterwards and the file is not write-locked."""
    import sqlite3

    db = await Database.connect(sqlite_url)
    other = await Database.connect(sqlite_url)  # another process, in effect
    try:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE t (n INTEGER)")
        holding, release = asyncio.Event(), asyncio.Event()

        async def hold_the_lock() -> None:
            async with other.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (0)")
                holding.set()
                await release.wait()

        async def write() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (1)")

        holder = asyncio.create_task(hold_the_lock())
        await holding.wait()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(write(), timeout=0.3)  # cancelled inside its BEGIN
        release.set()
        await holder
        await asyncio.wait_for(write(), timeout=5)
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT count(*) FROM t") == 2
        path = sqlite_url.removeprefix("sqlite:///")
        probe = sqlite3.connect(path, timeout=1)
        try:
            probe.execute("BEGIN IMMEDIATE")  # "database is locked" while wedged
            probe.execute("ROLLBACK")
        finally:
            probe.close()
    finally:
        await db.close()
        await other.close()


@pytest.mark.asyncio
async def test_a_nested_transaction_through_another_database_object_fails_at_once(
    sqlite_url: str,
) -> None:
    """Defect 13, the other way to nest on SQLite: two Database objects on one file
    (a store opened by URL beside the inbox's database). The inner BEGIN would wait
    for the outer's write lock, its own task's, for busy_timeout and then be
    redelivered forever; it fails at once instead, saying what to do."""
    from eventbus.errors import ConfigurationError

    async with (
        await Database.connect(sqlite_url) as first,
        await Database.connect(sqlite_url) as second,
    ):
        async with first.transaction() as tx:
            await tx.execute("CREATE TABLE t (n INTEGER)")
            with pytest.raises(ConfigurationError, match="Share one Database object"):
                async with asyncio.timeout(2):
                    async with second.transaction():
                        pass
        async with second.transaction() as tx:  # the file is free again
            assert await tx.fetchval("SELECT count(*) FROM t") == 0


@pytest.mark.asyncio
async def test_a_failed_open_closes_its_connection(tmp_path: Path) -> None:
    """Opening a file that another connection holds locked in rollback-journal mode
    fails (switching it to WAL needs the lock), and the half-open connection is closed:
    its worker thread would otherwise keep the process from ever exiting."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    before = set(threading.enumerate())
    try:
        with pytest.raises(DatabaseError, match="locked"):
            await Database.connect(f"sqlite:///{path}?busy_timeout=0.2")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for _ in range(100):  # the worker ends once it has taken its stop sentinel
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            break
        await asyncio.sleep(0.02)
    assert not left, f"threads of the failed connection still run: {left}"
