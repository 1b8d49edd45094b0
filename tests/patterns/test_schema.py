"""A table of an earlier release, or of no pattern at all, under setup() and migrate
(SQLite here; PostgreSQL in integration_tests/patterns/test_schema_postgres.py). The
whole earlier database is tests/patterns/migration_cases.py's."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus.patterns.migrations import migrate
from eventbus.patterns.sagas import SQLSagaStore
from eventbus.patterns.schema import SchemaVersionError, TableSchemaError, missing_columns
from eventbus.patterns.sql import Database

pytestmark = pytest.mark.asyncio

# The saga table as the release before the stored-messages column made it.
OLD_SAGAS = """CREATE TABLE {t} (saga_id TEXT PRIMARY KEY, saga_type TEXT NOT NULL,
    status TEXT NOT NULL, step INTEGER NOT NULL, data TEXT NOT NULL, deadline {real},
    to_compensate TEXT NOT NULL, compensated TEXT NOT NULL, attempts INTEGER NOT NULL,
    retry_at {real}, reason TEXT, version INTEGER NOT NULL)"""


def real(db: Database) -> str:
    return "DOUBLE PRECISION" if db.dialect == "postgres" else "REAL"


async def check_an_old_saga_table_is_refused_then_migrated(url: str) -> None:
    """A table named by the user (table=...) is found and migrated too."""
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute(OLD_SAGAS.format(t="old_sagas", real=real(db)))
        store = SQLSagaStore(db, table="old_sagas")
        with pytest.raises(SchemaVersionError, match="'old_sagas' is at schema version 1"):
            await store.setup()
        assert [(r.table, r.from_version) for r in await migrate(db)] == [("old_sagas", 1)]
        await store.setup()
        await store.setup()  # idempotent
        async with db.transaction() as tx:
            assert await missing_columns(tx, "old_sagas", ["outgoing", "version"]) == []


async def check_a_foreign_table_is_refused(url: str) -> None:
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE not_sagas (saga_id TEXT PRIMARY KEY, note TEXT)")
        with pytest.raises(TableSchemaError, match=r"'not_sagas'.*saga_type") as refused:
            await SQLSagaStore(db, table="not_sagas").setup()
        assert "saga_type" in refused.value.missing and refused.value.table == "not_sagas"
        assert await migrate(db) == []  # not one of ours: left alone


CASES = [check_an_old_saga_table_is_refused_then_migrated, check_a_foreign_table_is_refused]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_schema_on_sqlite(case: object, tmp_path: Path) -> None:
    await case(f"sqlite:///{tmp_path / 'schema.db'}")  # type: ignore[operator]
