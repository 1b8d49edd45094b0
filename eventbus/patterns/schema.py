"""Which version of its schema a pattern's table is at, and checking it in ``setup()``.

Every table group a pattern owns (an event store's four tables, an outbox, the
projections' three...) is recorded in ``eventbus_schema_versions``, one row per
group keyed by its main table: its kind and its schema version. The numbers
are one sequence for all kinds, the release's schema: version 1 is what the
last release before versions made (it recorded nothing), version 2
(:data:`SCHEMA_VERSION`) is this one's. A row per group, not one number for the
database: tables are named per instance (``Outbox(db, table=...)``), several of
a kind may share a database, and each ``setup()`` checks only its own.

``setup()`` calls :func:`ready` first, in its own transaction:

- no row and no table: an empty database; the group is recorded at the
  current version and ``setup()`` creates its tables;
- the current version: ``setup()`` goes on (``CREATE ... IF NOT EXISTS``);
- an older version (or a table of this kind with no row: made before versions
  were recorded) or a newer one: :class:`SchemaVersionError`, naming the table,
  its version and what to do (``eventbus db migrate <url>``, or upgrade
  eventbus), and nothing is changed;
- a table of that name that is no table of this kind: :class:`TableSchemaError`.

Upgrading is :mod:`eventbus.patterns.migrations`' job, not ``setup()``'s: a
migration is a deliberate step, run once, under a lock (:func:`lock_schema`),
while a ``setup()`` that changes tables as a side effect of starting a service
would do it from every instance at once, unannounced.

::

    async with db.transaction() as tx:
        await ready(tx, KINDS["outbox"], "eventbus_outbox", db.url)
        await tx.execute(CREATE_TABLE_IF_NOT_EXISTS)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from eventbus.errors import ConfigurationError, mask_url
from eventbus.patterns.sql import Transaction, blob_type, real_type

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "VERSIONS_TABLE",
    "SchemaVersionError",
    "TableKind",
    "TableSchemaError",
    "ensure_columns",
    "lock_schema",
    "missing_columns",
    "ready",
    "recorded_versions",
    "table_columns",
]

SCHEMA_VERSION = 2
"""The schema version of the patterns' tables this eventbus reads and writes."""

VERSIONS_TABLE = "eventbus_schema_versions"

# One key for every eventbus schema change in a PostgreSQL database: setups and
# migrations take turns (SQLite's BEGIN IMMEDIATE already admits one writer).
_LOCK_KEY = int.from_bytes(
    hashlib.blake2b(b"eventbus schema", digest_size=8).digest(), "big", signed=True
)


@dataclass(frozen=True, slots=True)
class TableKind:
    """A kind of table group: its name, the columns its main table had in every
    release (what tells it from a table that is not one), and its other tables
    (``{table}`` is the main table's name)."""

    name: str
    columns: tuple[str, ...]
    companions: tuple[str, ...] = ()
    fixed_table: str | None = None


KINDS: dict[str, TableKind] = {
    kind.name: kind
    for kind in (
        TableKind(
            "event store",
            ("position", "stream_id", "version", "event_id", "type", "time_us", "envelope"),
            ("{table}_snapshots", "{table}_checkpoints"),
        ),
        TableKind(
            "outbox",
            (
                "seq",
                "event_id",
                "topic",
                "stream",
                "partition_key",
                "envelope",
                "created_at",
                "sent_at",
            ),
        ),
        TableKind("inbox", ("key", "handled_at")),
        TableKind(
            "saga store",
            (
                "saga_id",
                "saga_type",
                "status",
                "step",
                "data",
                "deadline",
                "to_compensate",
                "compensated",
                "attempts",
                "retry_at",
                "reason",
                "version",
            ),
        ),
        TableKind("sequence store", ("scope", "entity_id", "applied"), ("{table}_parked",)),
        TableKind(
            "projections",
            ("name", "position"),
            ("eventbus_projection_seen",),
            fixed_table="eventbus_projections",
        ),
        # The sqlite:// and postgres:// brokers' log (eventbus.sqlbroker.provision).
        TableKind(
            "message log",
            ("id", "topic", "only_group", "msg_key", "headers", "body", "published_at"),
            ("eventbus_topics", "eventbus_groups", "eventbus_pending"),
            fixed_table="eventbus_messages",
        ),
    )
}
"""Every kind of table group the patterns own, by name."""


class TableSchemaError(ConfigurationError):
    """A table of the name a pattern uses exists but is not one of its tables; the
    message names the table, what it lacks and what to do."""

    def __init__(self, message: str, *, table: str, missing: Collection[str]) -> None:
        super().__init__(message)
        self.table = table
        self.missing = sorted(missing)


class SchemaVersionError(ConfigurationError):
    """A pattern's table is at a schema version this eventbus does not use: an older
    one (run ``eventbus db migrate``) or a newer one (upgrade eventbus)."""

    def __init__(
        self, kind: str, table: str, version: int, url: str, *, unrecorded: bool = False
    ) -> None:
        self.table, self.kind, self.version = table, kind, version
        where = f"{kind} table {table!r} is at schema version {version}"
        if version > SCHEMA_VERSION:
            message = (
                f"{where}, newer than this eventbus knows ({SCHEMA_VERSION}): a later "
                "release migrated it; upgrade eventbus to that release or later "
                "(a schema is never migrated back down)"
            )
        else:
            made = " (made before eventbus recorded schema versions)" if unrecorded else ""
            message = (
                f"{where}{made} and this eventbus needs version {SCHEMA_VERSION}: run "
                f"`eventbus db migrate {mask_url(url)}` (it upgrades every eventbus "
                "table of that database in place, keeps their rows, and is safe to "
                "run from several instances at once), then start again"
            )
        super().__init__(message)


async def lock_schema(tx: Transaction) -> None:
    """Take the schema lock until ``tx`` ends (PostgreSQL; on SQLite the transaction's
    ``BEGIN IMMEDIATE`` already is one): setups and migrations of one database take
    turns, so two never race on the same ``CREATE`` or ``ALTER``."""
    if tx.dialect == "postgres":
        await tx.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)


async def create_versions_table(tx: Transaction) -> None:
    """Create ``eventbus_schema_versions`` if it is missing."""
    real = real_type(tx.dialect)
    await tx.execute(
        f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (table_name TEXT PRIMARY "
        f"KEY, kind TEXT NOT NULL, version INTEGER NOT NULL, migrated_at {real} "
        "NOT NULL)"
    )


async def create_parked_table_2(tx: Transaction, table: str, *, envelope: bool) -> None:
    """Create ``table``, a table of parked events, as schema version 2 made it, if it is
    missing: an event store's ``<table>_parked`` (``envelope=False``) or the projections'
    ``eventbus_projection_parked`` (``envelope=True``, which keeps each event's envelope).

    Shared by the ``setup()`` that creates today's schema and the migration step to
    version 2, while both mean version 2's table; a version that changes it gives its
    migration step its own statement and this function a new name.
    """
    real = real_type(tx.dialect)
    blob = blob_type(tx.dialect)
    kept = f"envelope {blob} NOT NULL," if envelope else ""
    await tx.execute(f"""CREATE TABLE IF NOT EXISTS {table} (
        name TEXT NOT NULL,
        position BIGINT NOT NULL,
        stream_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        error TEXT NOT NULL,
        held_by BIGINT,
        parked_at {real} NOT NULL,
        {kept}
        PRIMARY KEY (name, position))""")


async def recorded_versions(tx: Transaction) -> dict[str, tuple[str, int]]:
    """Each recorded group's main table -> (kind, version); empty when nothing is."""
    if not await table_columns(tx, VERSIONS_TABLE):
        return {}
    rows = await tx.fetch(f"SELECT table_name, kind, version FROM {VERSIONS_TABLE}")
    return {str(table): (str(kind), int(version)) for table, kind, version in rows}


async def record_version(tx: Transaction, kind: str, table: str, version: int) -> None:
    """Record ``table``'s group of ``kind`` at ``version``."""
    await tx.execute(
        f"INSERT INTO {VERSIONS_TABLE} (table_name, kind, version, migrated_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (table_name) DO UPDATE SET kind = $2, "
        "version = $3, migrated_at = $4",
        table,
        kind,
        version,
        time.time(),
    )


async def ready(tx: Transaction, kind: TableKind, table: str, url: str) -> None:
    """Check, first thing in ``setup()``'s transaction, that the group of ``kind`` with
    main table ``table`` is at :data:`SCHEMA_VERSION`, recording it there when it does
    not exist yet (see the module docs); raises :class:`SchemaVersionError` or
    :class:`TableSchemaError` otherwise. ``url`` is the database's (the refusal names
    the command to run with it, its password masked)."""
    await lock_schema(tx)
    await create_versions_table(tx)
    row = await tx.fetchrow(
        f"SELECT kind, version FROM {VERSIONS_TABLE} WHERE table_name = $1", table
    )
    if row is None:
        found = await table_columns(tx, table)
        if not found:
            await record_version(tx, kind.name, table, SCHEMA_VERSION)
            return
        _refuse_foreign(table, kind, found)
        raise SchemaVersionError(kind.name, table, 1, url, unrecorded=True)
    if str(row[0]) != kind.name:
        raise TableSchemaError(
            f"table {table!r} is recorded as eventbus's {row[0]} table, not a {kind.name} "
            f"table: give the {kind.name} another table (table=...)",
            table=table,
            missing=(),
        )
    if int(row[1]) != SCHEMA_VERSION:
        raise SchemaVersionError(kind.name, table, int(row[1]), url)


def _refuse_foreign(table: str, kind: TableKind, found: Collection[str]) -> None:
    lacking = [name for name in kind.columns if name not in found]
    if lacking:
        raise TableSchemaError(
            f"table {table!r} exists but has no column(s) {', '.join(lacking)}: it is no "
            f"{kind.name} table of eventbus. Point the pattern at another table "
            "(table=...), or rename this one and let setup() create a fresh table, then "
            "copy the rows you need",
            table=table,
            missing=lacking,
        )


async def table_columns(tx: Transaction, table: str) -> set[str]:
    """The column names of ``table`` as the database has it (empty when it does not exist)."""
    if tx.dialect == "postgres":
        rows = await tx.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1",
            table,
        )
    else:
        rows = await tx.fetch("SELECT name FROM pragma_table_info($1)", table)
    return {str(row[0]) for row in rows}


async def missing_columns(tx: Transaction, table: str, expected: Collection[str]) -> list[str]:
    """The names in ``expected`` that ``table`` lacks, in ``expected``'s order
    (all of them when the table does not exist)."""
    found = await table_columns(tx, table)
    return [name for name in expected if name not in found]


async def ensure_columns(
    tx: Transaction, table: str, *, required: Collection[str], optional: Mapping[str, str]
) -> list[str]:
    """Make ``table`` (which exists) have the columns a migration step adds.

    ``required`` columns must be there already: :class:`TableSchemaError` when one
    is not. ``optional`` maps each column a release added to its definition (a
    type, and ``NOT NULL DEFAULT ...`` when existing rows need a value); the
    missing ones are added, so a step also runs on a table that has some of them
    already. Run it under :func:`lock_schema`. Returns the names of the columns added.
    """
    found = await table_columns(tx, table)
    lacking = [name for name in required if name not in found]
    if lacking:
        raise TableSchemaError(
            f"table {table!r} exists but has no column(s) {', '.join(lacking)}: it was not "
            "made by eventbus, or by a release this version cannot upgrade. Point the "
            "pattern at another table (table=...), or rename this one and let setup() "
            "create a fresh table, then copy the rows you need",
            table=table,
            missing=lacking,
        )
    added = [name for name in optional if name not in found]
    exists = " IF NOT EXISTS" if tx.dialect == "postgres" else ""
    for name in added:
        await tx.execute(f"ALTER TABLE {table} ADD COLUMN{exists} {name} {optional[name]}")
    return added
