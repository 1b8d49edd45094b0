"""The patterns' database layer on SQLite (PostgreSQL: integration_tests/patterns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus.errors import ConfigurationError
from eventbus.patterns.sql import Database
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
