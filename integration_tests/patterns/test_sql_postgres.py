"""The patterns' database layer on a real PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

from eventbus.patterns.sql import Database, DatabaseError
from eventbus.testing.faultproxy import FaultProxy
from tests.patterns import sql_cases

pytestmark = [pytest.mark.asyncio, pytest.mark.broker("postgres")]


async def test_round_trip(postgres_url: str) -> None:
    await sql_cases.check_round_trip(postgres_url)


async def test_rollback_and_unique(postgres_url: str) -> None:
    await sql_cases.check_rollback_and_unique(postgres_url)


async def test_concurrent_transactions(postgres_url: str) -> None:
    await sql_cases.check_concurrent_transactions(postgres_url)


async def test_errors_are_ours(postgres_url: str) -> None:
    await sql_cases.check_errors_are_ours(postgres_url)


async def test_refused_statements_are_not_infrastructure(postgres_url: str) -> None:
    await sql_cases.check_refused_statements_are_not_infrastructure(postgres_url)


async def test_refused_statement_is_dead_lettered(postgres_url: str) -> None:
    await sql_cases.check_refused_statement_is_dead_lettered(postgres_url)


async def test_busy_database_is_infrastructure(postgres_url: str) -> None:
    await sql_cases.check_busy_database_is_infrastructure(postgres_url)


async def test_nested_transaction_does_not_hang(postgres_url: str) -> None:
    await sql_cases.check_nested_transaction_does_not_hang(postgres_url)


async def test_options_are_not_server_settings(postgres_url: str) -> None:
    await sql_cases.check_options_are_not_server_settings(postgres_url)


async def test_a_slow_statement_fails_after_command_timeout(postgres_url: str) -> None:
    """Defect 14: ``command_timeout`` bounds each statement; the pool recovers after."""
    async with await Database.connect(f"{postgres_url}?command_timeout=0.5") as db:
        with pytest.raises(DatabaseError, match="did not answer"):
            async with db.transaction() as tx:
                await tx.execute("SELECT pg_sleep(3)")
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT 1") == 1


async def test_a_silent_link_fails_in_time_and_cancels_at_once(postgres_url: str) -> None:
    """Defect 14: when the network to PostgreSQL goes silent (no reset), a transaction
    fails with DatabaseError within ping_timeout (the BEGIN is the ping) instead
    of hanging, and a task waiting on the dead link is cancelled at once (so a
    relay's stop() returns in time)."""
    host_port = f"{urlsplit(postgres_url).hostname}:{urlsplit(postgres_url).port or 5432}"
    host, port = host_port.split(":")
    with FaultProxy(host, int(port)) as proxy:
        proxied = postgres_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        db = await Database.connect(
            f"{proxied}?ping_timeout=0.5&connect_timeout=0.5&command_timeout=60"
        )
        try:
            async with db.transaction() as tx:
                assert await tx.fetchval("SELECT 1") == 1
            await proxy.set_latency(3600)  # the link goes silent
            started = time.monotonic()
            with pytest.raises(DatabaseError, match=r"did not answer|no connection"):
                async with db.transaction() as tx:
                    await tx.fetchval("SELECT 1")
            assert time.monotonic() - started < 5
            await proxy.set_latency(0)

            entered = asyncio.Event()

            async def stuck() -> None:
                async with db.transaction() as tx:
                    await tx.execute("SELECT 1")
                    await proxy.set_latency(3600)
                    entered.set()
                    await tx.execute("SELECT 1")

            task = asyncio.create_task(stuck())
            await entered.wait()
            await asyncio.sleep(0.2)
            started = time.monotonic()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert time.monotonic() - started < 0.5, "cancelling waited on the dead link"
        finally:
            await proxy.set_latency(0)
            await db.close()
