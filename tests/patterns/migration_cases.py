"""Schema versions and `eventbus db migrate`, shared by the SQLite (tests/patterns)
and PostgreSQL (integration_tests/patterns) runs: plain async functions taking
database URLs. The earlier database is tests/patterns/schema_v1.py's."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable

import pytest

from eventbus import EventBus
from eventbus.errors import mask_url
from eventbus.patterns.cqrs import Projection
from eventbus.patterns.eventsourcing import Repository, SQLEventStore
from eventbus.patterns.inbox import Inbox
from eventbus.patterns.migrations import Migrated, migrate
from eventbus.patterns.ordering import SQLSequenceStore
from eventbus.patterns.outbox import Outbox, OutboxRelay
from eventbus.patterns.sagas import SagaContext, SagaDefinition, SagaOrchestrator, SQLSagaStore
from eventbus.patterns.sagas import Step as SagaStep
from eventbus.patterns.schema import (
    SCHEMA_VERSION,
    VERSIONS_TABLE,
    SchemaVersionError,
    TableSchemaError,
)
from eventbus.patterns.sql import Database, Transaction
from eventbus.testing import Collector as Seen
from eventbus.testing import handler_context
from tests.patterns.schema_v1 import (
    HANDLED,
    INBOX_GROUP,
    INBOX_TOPIC,
    KEPT_STALE_ID,
    SHOP_OUTBOX,
    V1_GROUPS,
    V1_SEEN_ID,
    Ledger,
    OrderPlaced,
    make_v1,
)

WAIT = 10.0


class Counts(Projection):
    """Events by class (the read model the earlier release's projection made)."""

    async def create_tables(self, tx: Transaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS migrated_counts (event TEXT PRIMARY KEY, n INTEGER)"
        )

    async def apply(self, event: object, tx: Transaction) -> None:
        await tx.execute(
            "INSERT INTO migrated_counts (event, n) VALUES ($1, 1) "
            "ON CONFLICT (event) DO UPDATE SET n = migrated_counts.n + 1",
            type(event).__name__,
        )


def patterns(db: Database) -> dict[str, Callable[[], Awaitable[None]]]:
    """Each pattern's setup() on the tables the earlier release made, by main table."""
    return {
        "eventbus_events": SQLEventStore(db).setup,
        "eventbus_outbox": Outbox(db).setup,
        SHOP_OUTBOX: Outbox(db, table=SHOP_OUTBOX).setup,
        "eventbus_inbox": Inbox(db).setup,
        "eventbus_sagas": SQLSagaStore(db).setup,
        "eventbus_sequences": SQLSequenceStore(db).setup,
        "eventbus_projections": Counts(db, name="counts").setup,
    }


async def versions(db: Database) -> dict[str, int]:
    async with db.transaction() as tx:
        rows = await tx.fetch(f"SELECT table_name, version FROM {VERSIONS_TABLE}")
    return {str(table): int(version) for table, version in rows}


def changed(results: list[Migrated]) -> dict[str, tuple[int, int]]:
    return {r.table: (r.from_version, r.to_version) for r in results if r.changed}


async def check_setup_refuses_each_v1_table_naming_the_command(url: str) -> None:
    """setup() on a table of the earlier release changes nothing and says what to run."""
    await make_v1(url)
    async with await Database.connect(url) as db:
        for table, setup in patterns(db).items():
            with pytest.raises(SchemaVersionError) as refused:
                await setup()
            message = str(refused.value)
            assert f"'{table}'" in message and "version 1" in message, message
            assert f"eventbus db migrate {mask_url(url)}" in message, message
            assert (refused.value.table, refused.value.version) == (table, 1)
        async with db.transaction() as tx:  # nothing was added to the old tables
            assert await tx.fetchval("SELECT count(*) FROM eventbus_outbox") == 2
            with pytest.raises(Exception, match="claimed_by"):
                await tx.fetch("SELECT claimed_by FROM eventbus_outbox")


async def check_migrate_keeps_the_data_and_the_patterns_work_on_it(url: str) -> None:
    """After `migrate`, every pattern sets up and works on the earlier release's rows."""
    await make_v1(url)
    async with await Database.connect(url) as db:
        results = await migrate(db)
        assert changed(results) == {t: (1, SCHEMA_VERSION) for t in V1_GROUPS}
        assert {r.table: r.kind for r in results} == V1_GROUPS
        assert await versions(db) == {t: SCHEMA_VERSION for t in V1_GROUPS}
        for setup in patterns(db).values():
            await setup()
        await _event_store_and_projection(db)
        await _outbox_relays_the_old_rows(db)
        await _saga_ticks(db)
        inbox = Inbox(db)
        assert await inbox.handled(handler_context(HANDLED, topic=INBOX_TOPIC, group=INBOX_GROUP))
        sequences = SQLSequenceStore(db)
        assert [s.event_id for s in await sequences.stale("stock")] == [KEPT_STALE_ID]
        async with sequences.unit_of_work() as session:
            assert await session.last("stock", "sku-1") == 3


async def _event_store_and_projection(db: Database) -> None:
    store = SQLEventStore(db)
    repo = Repository(store, Ledger, snapshot_every=2)
    ledger = await repo.load("acc-1")  # the plain-JSON snapshot is passed over: a replay
    assert (ledger.owner, ledger.balance, ledger.version) == ("ada", 10, 2)
    ledger.deposit(5)
    assert [s.position for s in await repo.save(ledger)] == [4]
    assert (await repo.load("acc-1")).balance == 15
    assert await store.get_checkpoint("relay") == 1
    assert await store.parked("relay") == []
    counts = Counts(db, name="counts")
    assert await counts.position() == 1  # where the earlier release left it
    assert await counts.catch_up(store) == 3
    async with db.transaction() as tx:
        rows = await tx.fetch("SELECT event, n FROM migrated_counts ORDER BY event")
    assert rows == [("Deposited", 2), ("Opened", 2)]
    # The id the earlier release saw is kept for the retention, counted from the migration.
    assert await counts.cleanup(older_than=3600) == 0
    async with db.transaction() as tx:
        assert (
            await tx.fetchval(
                "SELECT count(*) FROM eventbus_projection_seen WHERE event_id = $1", V1_SEEN_ID
            )
            == 1
        )


async def _outbox_relays_the_old_rows(db: Database) -> None:
    bus = EventBus(f"memory://{uuid.uuid4()}", source="v2")
    seen: Seen[str] = Seen()

    @bus.subscribe(OrderPlaced, group="billing")
    async def record(event: OrderPlaced) -> None:
        seen.add(event.order_id)

    async with bus:
        for table in ("eventbus_outbox", SHOP_OUTBOX):
            outbox = Outbox(db, table=table)
            assert await outbox.pending() == 1
            assert await OutboxRelay(outbox, bus).publish_pending() == 1
            assert await outbox.pending() == 0
        assert sorted(await seen.wait_count(2, WAIT)) == [
            "shop-waiting-since-v1",
            "waiting-since-v1",
        ]


async def _saga_ticks(db: Database) -> None:
    undone: list[str] = []

    async def nothing(ctx: SagaContext) -> None:
        pass

    async def undo(ctx: SagaContext) -> None:
        undone.append(ctx.step)

    definition = SagaDefinition(
        "v1-order",
        [SagaStep("credit", nothing, undo), SagaStep("charge", nothing, undo, timeout=10.0)],
    )
    bus = EventBus(f"memory://{uuid.uuid4()}", source="v2")
    orchestrator = SagaOrchestrator(definition, SQLSagaStore(db), bus, clock=lambda: 2_000.0)
    async with bus:
        await orchestrator.tick()  # its step timed out under the earlier release's deadline
    state = await orchestrator.get("o-1")
    assert state is not None and state.status == "compensated", state
    assert undone == ["charge", "credit"] and state.data == {"total": 42}


async def check_migrate_twice_changes_nothing_the_second_time(url: str) -> None:
    await make_v1(url)
    async with await Database.connect(url) as db:
        first = await migrate(db)
        second = await migrate(db)
        assert changed(first) and not changed(second)
        assert {r.table: (r.from_version, r.to_version) for r in second} == {
            t: (SCHEMA_VERSION, SCHEMA_VERSION) for t in V1_GROUPS
        }
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT count(*) FROM eventbus_events") == 3
            assert await tx.fetchval("SELECT count(*) FROM eventbus_outbox") == 2


async def check_migrations_at_once_migrate_once(url: str, instances: int = 4) -> None:
    """Several instances migrating at once (each its own connection): no error, and
    each table is migrated by exactly one of them."""
    await make_v1(url)
    dbs = [await Database.connect(url) for _ in range(instances)]
    try:
        runs = await asyncio.wait_for(asyncio.gather(*(migrate(db) for db in dbs)), 60)
    finally:
        for db in dbs:
            await db.close()
    migrated = [table for results in runs for table in changed(results)]
    assert sorted(migrated) == sorted(V1_GROUPS), runs


async def check_setup_on_an_empty_database_makes_the_current_version(url: str) -> None:
    """setup() on an empty database records every table at the current version, also
    when several instances set up at once; `migrate` then has nothing to do."""
    dbs = [await Database.connect(url) for _ in range(3)]
    try:
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    setup()
                    for db in dbs
                    for table, setup in patterns(db).items()
                    if table != SHOP_OUTBOX
                )
            ),
            60,
        )
        expected = {t: SCHEMA_VERSION for t in V1_GROUPS if t != SHOP_OUTBOX}
        assert await versions(dbs[0]) == expected
        assert not changed(await migrate(dbs[0]))
    finally:
        for db in dbs:
            await db.close()


async def check_a_newer_version_is_refused(url: str) -> None:
    """A table migrated by a later release is refused by setup() and by migrate,
    which then changes nothing at all (not even the tables it could migrate)."""
    await make_v1(url)
    async with await Database.connect(url) as db:
        await migrate(db)
        async with db.transaction() as tx:
            await tx.execute(
                f"UPDATE {VERSIONS_TABLE} SET version = $1 WHERE table_name = 'eventbus_inbox'",
                SCHEMA_VERSION + 1,
            )
            await tx.execute(
                f"UPDATE {VERSIONS_TABLE} SET version = 1 WHERE table_name = 'eventbus_outbox'"
            )
        with pytest.raises(
            SchemaVersionError,
            match=re.escape(f"'eventbus_inbox' is at schema version {SCHEMA_VERSION + 1}"),
        ) as refused:
            await Inbox(db).setup()
        assert "upgrade eventbus" in str(refused.value)
        assert refused.value.version == SCHEMA_VERSION + 1
        with pytest.raises(SchemaVersionError, match="eventbus_inbox"):
            await migrate(db)
        found = await versions(db)
        assert (found["eventbus_inbox"], found["eventbus_outbox"]) == (SCHEMA_VERSION + 1, 1)


async def columns_and_indexes(db: Database, tables: list[str]) -> dict[str, object]:
    """What a pattern reads of its tables: columns (name, type, nullable) and index names."""
    shape: dict[str, object] = {}
    async with db.transaction() as tx:
        for table in tables:
            if db.dialect == "postgres":
                columns = await tx.fetch(
                    "SELECT column_name, data_type, is_nullable FROM information_schema."
                    "columns WHERE table_schema = current_schema() AND table_name = $1 "
                    "ORDER BY column_name",
                    table,
                )
                indexes = await tx.fetch(
                    "SELECT indexname FROM pg_indexes WHERE tablename = $1 ORDER BY 1", table
                )
            else:
                columns = await tx.fetch(
                    'SELECT name, type, "notnull" FROM pragma_table_info($1) ORDER BY name', table
                )
                indexes = await tx.fetch(
                    "SELECT name FROM pragma_index_list($1) ORDER BY name", table
                )
            shape[table] = (columns, indexes)
    return shape


TABLES = [
    "eventbus_events",
    "eventbus_events_snapshots",
    "eventbus_events_checkpoints",
    "eventbus_events_parked",
    "eventbus_outbox",
    "eventbus_inbox",
    "eventbus_sagas",
    "eventbus_sequences",
    "eventbus_sequences_parked",
    "eventbus_projections",
    "eventbus_projection_seen",
    "eventbus_projection_parked",
]


async def check_a_migrated_database_has_the_tables_of_a_new_one(
    v1_url: str, fresh_url: str
) -> None:
    """Migrating the earlier release's tables gives the columns and indexes that
    setup() makes on an empty database."""
    await make_v1(v1_url)
    async with await Database.connect(v1_url) as old, await Database.connect(fresh_url) as new:
        await migrate(old)
        for setup in patterns(new).values():
            await setup()
        assert await columns_and_indexes(old, TABLES) == await columns_and_indexes(new, TABLES)


def pre_release_outbox_ddl(dialect: str, table: str) -> list[str]:
    """Outbox.setup() of the commits before the parked-row columns (4129f27^), before
    the release: `migrate` upgrades such a table too."""
    if dialect == "postgres":
        columns = ("seq BIGSERIAL PRIMARY KEY", "BYTEA", "DOUBLE PRECISION")
    else:
        columns = ("seq INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "REAL")
    return [
        f"CREATE TABLE {table} ({columns[0]}, event_id TEXT NOT NULL, topic TEXT NOT NULL, "
        f"stream TEXT NOT NULL, partition_key TEXT, envelope {columns[1]} NOT NULL, "
        f"created_at {columns[2]} NOT NULL, sent_at {columns[2]})",
        f"CREATE INDEX {table}_unsent ON {table} (stream, seq) WHERE sent_at IS NULL",
        f"CREATE INDEX {table}_sent ON {table} (sent_at) WHERE sent_at IS NOT NULL",
    ]


async def check_an_outbox_older_than_the_release_is_migrated_too(url: str) -> None:
    """An outbox table without the parked-row columns (defect 15's table) is refused by
    setup(), migrated by `migrate`, and then its waiting rows and new ones are relayed;
    a table of that name that is no outbox is refused, naming what it lacks."""
    table = "eventbus_outbox_old"
    async with await Database.connect(url) as db:
        async with db.transaction() as tx:
            for statement in pre_release_outbox_ddl(db.dialect, table):
                await tx.execute(statement)
        outbox = Outbox(db, table=table)
        bus = EventBus(
            f"memory://{uuid.uuid4()}", source="orders", publish_middleware=[outbox.middleware]
        )
        seen: Seen[str] = Seen()

        @bus.subscribe(OrderPlaced, group="billing")
        async def record(event: OrderPlaced) -> None:
            seen.add(event.order_id)

        async with bus:
            async with outbox.unit_of_work():  # written by the old code, not yet relayed
                await bus.publish(OrderPlaced(order_id="o-1"))
            with pytest.raises(SchemaVersionError, match=f"'{table}' is at schema version 1"):
                await outbox.setup()
            assert changed(await migrate(db)) == {table: (1, SCHEMA_VERSION)}
            await asyncio.gather(outbox.setup(), Outbox(db, table=table).setup())
            async with outbox.unit_of_work():
                await bus.publish(OrderPlaced(order_id="o-2"))
            assert await OutboxRelay(outbox, bus).publish_pending() == 2
            assert sorted(await seen.wait_count(2, WAIT)) == ["o-1", "o-2"]
        async with db.transaction() as tx:
            await tx.execute(f"CREATE TABLE {table}_foreign (seq INTEGER, note TEXT)")
        with pytest.raises(TableSchemaError, match=f"{table}_foreign.*envelope"):
            await Outbox(db, table=f"{table}_foreign").setup()
