"""Schema versions and migrations on SQLite (PostgreSQL:
integration_tests/patterns/test_migrations_postgres.py); the bodies are in
migration_cases, the earlier release's database in schema_v1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from eventbus.patterns.migrations import STEPS
from eventbus.patterns.schema import KINDS, SCHEMA_VERSION
from tests.patterns import migration_cases

CASES: list[Callable[[str], Awaitable[None]]] = [
    migration_cases.check_setup_refuses_each_v1_table_naming_the_command,
    migration_cases.check_migrate_keeps_the_data_and_the_patterns_work_on_it,
    migration_cases.check_migrate_twice_changes_nothing_the_second_time,
    migration_cases.check_migrations_at_once_migrate_once,
    migration_cases.check_setup_on_an_empty_database_makes_the_current_version,
    migration_cases.check_a_newer_version_is_refused,
    migration_cases.check_an_outbox_older_than_the_release_is_migrated_too,
]


@pytest.mark.asyncio
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_migrations_on_sqlite(case: Callable[[str], Awaitable[None]], tmp_path: Path) -> None:
    await case(f"sqlite:///{tmp_path / 'app.db'}")


@pytest.mark.asyncio
async def test_a_migrated_database_has_the_tables_of_a_new_one(tmp_path: Path) -> None:
    await migration_cases.check_a_migrated_database_has_the_tables_of_a_new_one(
        f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    )


def test_every_kind_has_a_step_from_every_earlier_version() -> None:
    """Raising SCHEMA_VERSION without a step for some table kind would leave its
    tables refused by setup() with no way forward."""
    for kind in KINDS:
        assert sorted(STEPS[kind]) == list(range(1, SCHEMA_VERSION)), kind
