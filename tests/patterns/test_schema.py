"""Tables of an earlier release: setup() upgrades what it safely can and refuses the
rest with a message naming the table (SQLite here; PostgreSQL in
integration_tests/patterns/test_schema_postgres.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus.patterns.sagas import SqlSagaStore
from eventbus.patterns.schema import TableSchemaError, missing_columns
from eventbus.patterns.sql import Database

pytestmark = pytest.mark.asyncio

# The saga table as the release before the stored-messages column made it.
OLD_SAGAS = """CREATE TABLE {t} (saga_id TEXT PRIMARY KEY, saga_type TEXT NOT NULL,
    status TEXT NOT NULL, step INTEGER NOT NULL, data TEXT NOT NULL, deadline {real},
    to_compensate TEXT NOT NULL, compensated TEXT NOT NULL, attempts INTEGER NOT NULL,
    retry_at {real}, reason TEXT, version INTEGER NOT NULL)"""


def real(db: Database) -> str:
    return "DOUBLE PRECISION" if db.dialect == "postgres" else "REAL"


async def check_an_old_saga_table_is_upgraded(url: str) -> None:
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute(OLD_SAGAS.format(t="old_sagas", real=real(db)))
        store = SqlSagaStore(db, table="old_sagas")
        await store.setup()
        await store.setup()  # idempotent
        async with db.transaction() as tx:
            assert await missing_columns(tx, "old_sagas", ["outgoing", "version"]) == []


async def check_a_foreign_table_is_refused(url: str) -> None:
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE not_sagas (saga_id TEXT PRIMARY KEY, note TEXT)")
        with pytest.raises(TableSchemaError, match=r"'not_sagas'.*saga_type") as refused:
            await SqlSagaStore(db, table="not_sagas").setup()
        assert "saga_type" in refused.value.missing and refused.value.table == "not_sagas"


CASES = [check_an_old_saga_table_is_upgraded, check_a_foreign_table_is_refused]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_schema_on_sqlite(case: object, tmp_path: Path) -> None:
    await case(f"sqlite:///{tmp_path / 'schema.db'}")  # type: ignore[operator]
