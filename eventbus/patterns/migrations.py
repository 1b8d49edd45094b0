"""Upgrading the patterns' tables to this eventbus's schema: ``eventbus db migrate URL``.

:func:`migrate` brings every pattern table group of a database (see
:mod:`eventbus.patterns.schema`) from the version it is at to
:data:`~eventbus.patterns.schema.SCHEMA_VERSION`, one step per version, and
records the new version; rows are kept. It finds the groups by the version
table and, for tables of the release before versions were recorded (version 1,
any table name the user chose), by their columns: a table having every column
its kind always had, and its kind's other tables, is one.

Why it is safe to run from several instances at once, and to run again: all of
it happens in **one transaction** that first takes the schema lock (PostgreSQL:
an advisory lock; SQLite: ``BEGIN IMMEDIATE``). A second run waits for the
first, then finds everything at the current version and changes nothing. The
steps only add (tables, columns, indexes) and each adds only what is missing,
so a group already partly in the new shape is fine. A group at a version newer
than this eventbus is refused before anything changes.

The migrated tables still suit the release before while it is being replaced: it
names the columns it writes, and each column a step adds is nullable or has a
default.

::

    async with await Database.connect("postgresql://app@db/shop") as db:
        for result in await migrate(db):
            print(result)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from eventbus.patterns.schema import (
    KINDS,
    SCHEMA_VERSION,
    VERSIONS_TABLE,
    SchemaVersionError,
    TableKind,
    create_parked_table_2,
    create_versions_table,
    ensure_columns,
    lock_schema,
    record_version,
    recorded_versions,
)
from eventbus.patterns.sql import Database, Transaction, real_type

__all__ = ["STEPS", "Migrated", "migrate"]

Step = Callable[[Transaction, str], Awaitable[None]]
"""Moves one group (its main table's name) from a version to the next."""


@dataclass(frozen=True, slots=True)
class Migrated:
    """What :func:`migrate` did to one table group."""

    table: str
    kind: str
    from_version: int
    to_version: int

    @property
    def changed(self) -> bool:
        """Whether it was migrated (``False``: it was at the current version already)."""
        return self.from_version != self.to_version

    def __str__(self) -> str:
        if self.changed:
            return (
                f"{self.table} ({self.kind}): migrated from version {self.from_version} "
                f"to version {self.to_version}"
            )
        return f"{self.table} ({self.kind}): at version {self.to_version}, nothing to do"


async def migrate(db: Database) -> list[Migrated]:
    """Migrate every pattern table group of ``db`` to the current schema version, in one
    transaction; returns what was found and done, by table name.

    Raises :class:`~eventbus.patterns.schema.SchemaVersionError` (changing nothing)
    when a group is at a version newer than this eventbus knows.
    """
    async with db.transaction() as tx:
        await lock_schema(tx)
        recorded = await recorded_versions(tx)
        tables = await _tables(tx)
        for table, (name, version) in sorted(recorded.items()):
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(name, table, version, db.url)
        plan = {
            table: (KINDS[name], version)
            for table, (name, version) in recorded.items()
            if table in tables and name in KINDS
        }
        for table, found in _unrecorded(tables, set(recorded)).items():
            plan[table] = (found, 1)
        gone = {
            table for table, (name, _) in recorded.items() if table not in tables and name in KINDS
        }
        if not plan and not gone:
            return []
        await create_versions_table(tx)
        for table in gone:
            # Its tables were dropped: forget it, so setup() makes them afresh.
            await tx.execute(f"DELETE FROM {VERSIONS_TABLE} WHERE table_name = $1", table)
        done = []
        for table, (kind, version) in sorted(plan.items()):
            for step in range(version, SCHEMA_VERSION):
                await STEPS[kind.name][step](tx, table)
            if table not in recorded or version != SCHEMA_VERSION:
                await record_version(tx, kind.name, table, SCHEMA_VERSION)
            done.append(Migrated(table, kind.name, version, SCHEMA_VERSION))
        return done


async def _tables(tx: Transaction) -> dict[str, set[str]]:
    """Every table of the database (its current schema) -> its column names."""
    if tx.dialect == "postgres":
        rows = await tx.fetch(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t ON t.table_schema = c.table_schema "
            "AND t.table_name = c.table_name WHERE c.table_schema = current_schema() "
            "AND t.table_type = 'BASE TABLE'"
        )
    else:
        rows = await tx.fetch(
            "SELECT m.name, p.name FROM sqlite_master m, "
            "pragma_table_info(m.name) p WHERE m.type = 'table'"
        )
    tables: dict[str, set[str]] = {}
    for table, column in rows:
        tables.setdefault(str(table), set()).add(str(column))
    return tables


def _unrecorded(tables: dict[str, set[str]], recorded: set[str]) -> dict[str, TableKind]:
    """The main tables of groups made before versions were recorded, with their kind."""
    found = {}
    for table, columns in tables.items():
        if table in recorded or table == VERSIONS_TABLE:
            continue
        for kind in KINDS.values():
            if kind.fixed_table not in (None, table) or not columns.issuperset(kind.columns):
                continue
            if all(other.format(table=table) in tables for other in kind.companions):
                found[table] = kind
                break
    return found


# -- version 1 (45f13ef, the last release without versions) to 2 ---------------------------
# Frozen: each step creates what its version had, even if a later one changes it again
# (that change is the later step's).


async def _gains(tx: Transaction, table: str, kind: str, **columns: str) -> None:
    """``table``, a ``kind`` table (its required columns are checked), gains the
    ``columns`` (name=SQL type) it lacks."""
    await ensure_columns(tx, table, required=KINDS[kind].columns, optional=columns)


async def _event_store_2(tx: Transaction, table: str) -> None:
    # Events a relay or a projection could not handle, parked (issue #19, defect 10).
    await create_parked_table_2(tx, f"{table}_parked", envelope=False)


async def _outbox_2(tx: Transaction, table: str) -> None:
    # The claim columns of a relay that publishes outside its transaction (defect 12);
    # failed_at/error too, for an outbox of the commits before 45f13ef that lacked them.
    real = real_type(tx.dialect)
    await _gains(
        tx, table, "outbox", failed_at=real, error="TEXT", claimed_by="TEXT", claimed_until=real
    )


async def _saga_store_2(tx: Transaction, table: str) -> None:
    # Messages a committed change still has to send (defect 4), and the indexes of an
    # orchestrator's tick that keeps to its own saga type (defect 3).
    await _gains(tx, table, "saga store", outgoing="TEXT")
    await tx.execute(
        f"CREATE INDEX IF NOT EXISTS {table}_type_status ON {table} (saga_type, status, deadline)"
    )
    await tx.execute(
        f"CREATE INDEX IF NOT EXISTS {table}_outgoing ON {table} (saga_type) "
        "WHERE outgoing IS NOT NULL"
    )


async def _projections_2(tx: Transaction, table: str) -> None:
    real = real_type(tx.dialect)
    # The rebuild's fence (defect 1): every checkpoint starts at generation 0.
    await _gains(tx, table, "projections", generation="BIGINT NOT NULL DEFAULT 0")
    # When a bus-fed id was seen, so cleanup() can prune by age (defect 18). Ids seen
    # before are dated by the migration: kept a whole retention from now. The column
    # keeps a default so the release before, still running during an upgrade, can
    # insert without it (PostgreSQL: the time of each insert; SQLite takes only a
    # constant there).
    now = "extract(epoch from now())" if tx.dialect == "postgres" else f"{time.time():.6f}"
    await ensure_columns(
        tx,
        "eventbus_projection_seen",
        required=("name", "event_id"),
        optional={"seen_at": f"{real} NOT NULL DEFAULT {now}"},
    )
    # Stored events a projection parked (defect 10), with their envelope.
    await create_parked_table_2(tx, "eventbus_projection_parked", envelope=True)


async def _unchanged(tx: Transaction, table: str) -> None:
    """A kind whose tables this version did not change: only its version moves."""


STEPS: dict[str, dict[int, Step]] = {
    "event store": {1: _event_store_2},
    "outbox": {1: _outbox_2},
    "inbox": {1: _unchanged},
    "saga store": {1: _saga_store_2},
    "sequence store": {1: _unchanged},
    "projections": {1: _projections_2},
    # Made at version 2: a group found without its version row is recorded again.
    "message log": {1: _unchanged},
}
"""Each kind's steps, by the version they start from."""
