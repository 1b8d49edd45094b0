"""tests/patterns/test_migrations.py's cases on PostgreSQL (a fresh database per test),
and `eventbus db migrate` run by several processes at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from integration_tests.harness import postgres
from tests.patterns import migration_cases
from tests.patterns.test_migrations import CASES
from tests.test_cli_db import check_processes_at_once_migrate_once

pytestmark = [pytest.mark.asyncio, pytest.mark.broker("postgres")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_migrations_on_postgres(
    case: Callable[[str], Awaitable[None]], postgres_url: str
) -> None:
    await case(postgres_url)


async def test_more_instances_at_once_on_postgres(postgres_url: str) -> None:
    await migration_cases.check_migrations_at_once_migrate_once(postgres_url, instances=8)


async def test_a_migrated_database_has_the_tables_of_a_new_one(postgres_url: str) -> None:
    async with postgres.fresh_database() as fresh_url:
        await migration_cases.check_a_migrated_database_has_the_tables_of_a_new_one(
            postgres_url, fresh_url
        )


async def test_the_command_from_several_processes_at_once(postgres_url: str) -> None:
    await check_processes_at_once_migrate_once(postgres_url)
