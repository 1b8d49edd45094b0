"""The patterns' database layer on a real PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import pytest

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
