"""A database as the last release (45f13ef, schema version 1) left it: its tables,
made with its own DDL, and rows written with its own statements.

Every ``CREATE`` below is copied from that release's ``setup()`` methods
(``git show 45f13ef:eventbus/patterns/<file>``); on SQLite the result was checked
against what that release's code itself creates (the same ``sqlite_master``). The
rows are what its code wrote: envelopes as ``encode_structured`` stores them, saga
state as its ``_row`` encoded it, a snapshot in the plain JSON of that release.
"""

from __future__ import annotations

import json
import time

from eventbus import Event
from eventbus.codec import encode_structured
from eventbus.envelope import Envelope
from eventbus.middleware.idempotency import idempotency_key
from eventbus.patterns.eventsourcing import Aggregate, applies
from eventbus.patterns.sql import Database, Transaction

SHOP_OUTBOX = "shop_outbox"  # an outbox made with table=... in that release
INBOX_TOPIC, INBOX_GROUP = "v1-orders", "ledger"
HANDLED = Envelope.create(type="migrate-test.deposited", source="v1", data=b'{"amount":1}')
KEPT_STALE_ID = "stale-event-1"
V1_SEEN_ID = "seen-by-v1"


class Opened(Event, type="migrate-test.opened", topic="migrate-test.ledgers"):
    owner: str


class Deposited(Event, type="migrate-test.deposited", topic="migrate-test.ledgers"):
    amount: int


class OrderPlaced(Event, type="migrate-test.order-placed", topic="migrate-test.orders"):
    order_id: str


class Ledger(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.owner = ""
        self.balance = 0

    def deposit(self, amount: int) -> None:
        self.record(Deposited(amount=amount))

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner = event.owner

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


def v1_ddl(dialect: str) -> list[str]:
    """The tables and indexes of every pattern, as 45f13ef's setup() created them."""
    blob = "BYTEA" if dialect == "postgres" else "BLOB"
    real = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    seq = (
        "seq BIGSERIAL PRIMARY KEY"
        if dialect == "postgres"
        else ("seq INTEGER PRIMARY KEY AUTOINCREMENT")
    )
    t = "eventbus_events"
    statements = [
        # eventbus/patterns/eventsourcing/sql_store.py
        f"""CREATE TABLE IF NOT EXISTS {t} (
                position BIGINT PRIMARY KEY,
                stream_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                event_id TEXT NOT NULL,
                type TEXT NOT NULL,
                time_us BIGINT NOT NULL,
                envelope {blob} NOT NULL,
                CONSTRAINT {t}_stream_version UNIQUE (stream_id, version),
                CONSTRAINT {t}_event_id UNIQUE (event_id))""",
        f"""CREATE TABLE IF NOT EXISTS {t}_snapshots (
                stream_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                type TEXT NOT NULL,
                schema INTEGER NOT NULL,
                state {blob} NOT NULL,
                PRIMARY KEY (stream_id, version))""",
        f"""CREATE TABLE IF NOT EXISTS {t}_checkpoints (
                name TEXT PRIMARY KEY,
                position BIGINT NOT NULL)""",
        # eventbus/patterns/inbox.py
        f"CREATE TABLE IF NOT EXISTS eventbus_inbox (key TEXT PRIMARY KEY, handled_at {real} "
        "NOT NULL)",
        # eventbus/patterns/sagas/state.py
        f"""CREATE TABLE IF NOT EXISTS eventbus_sagas (
            saga_id TEXT PRIMARY KEY,
            saga_type TEXT NOT NULL,
            status TEXT NOT NULL,
            step INTEGER NOT NULL,
            data TEXT NOT NULL,
            deadline {real},
            to_compensate TEXT NOT NULL,
            compensated TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            retry_at {real},
            reason TEXT,
            version INTEGER NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS eventbus_sagas_status ON eventbus_sagas (status, deadline)",
        # eventbus/patterns/sagas/ordering.py
        "CREATE TABLE IF NOT EXISTS eventbus_sequences (scope TEXT NOT NULL, "
        "entity_id TEXT NOT NULL, applied BIGINT, PRIMARY KEY (scope, entity_id))",
        "CREATE TABLE IF NOT EXISTS eventbus_sequences_parked (scope TEXT NOT NULL, "
        "entity_id TEXT NOT NULL, sequence BIGINT NOT NULL, applied BIGINT NOT NULL, "
        f"event_type TEXT NOT NULL, event_id TEXT NOT NULL, data TEXT NOT NULL, "
        f"parked_at {real} NOT NULL)",
        # eventbus/patterns/cqrs/projections.py
        "CREATE TABLE IF NOT EXISTS eventbus_projections (name TEXT PRIMARY KEY, "
        "position BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS eventbus_projection_seen (name TEXT NOT NULL, "
        "event_id TEXT NOT NULL, PRIMARY KEY (name, event_id))",
    ]
    # eventbus/patterns/outbox/store.py, for the default table and one named by the user
    for table in ("eventbus_outbox", SHOP_OUTBOX):
        statements += [
            f"CREATE TABLE IF NOT EXISTS {table} ({seq}, event_id TEXT NOT NULL, "
            f"topic TEXT NOT NULL, stream TEXT NOT NULL, partition_key TEXT, "
            f"envelope {blob} NOT NULL, created_at {real} NOT NULL, "
            f"sent_at {real}, failed_at {real}, error TEXT)",
            f"CREATE INDEX IF NOT EXISTS {table}_unsent ON {table} (stream, seq) "
            "WHERE sent_at IS NULL",
            f"CREATE INDEX IF NOT EXISTS {table}_sent ON {table} (sent_at) "
            "WHERE sent_at IS NOT NULL",
        ]
    return statements


def _event(event: Event, stream: str) -> Envelope:
    return Envelope.create(
        type=event.event_type(),
        source="v1",
        subject=stream,
        partitionkey=stream,
        data=event.model_dump_json().encode(),
    )


async def _events(tx: Transaction) -> None:
    rows = [
        ("acc-1", 1, Opened(owner="ada")),
        ("acc-1", 2, Deposited(amount=10)),
        ("acc-2", 1, Opened(owner="bo")),
    ]
    for position, (stream, version, event) in enumerate(rows, start=1):
        envelope = _event(event, stream)
        await tx.execute(
            "INSERT INTO eventbus_events (position, stream_id, version, event_id, type, "
            "time_us, envelope) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            position,
            stream,
            version,
            envelope.id,
            envelope.type,
            int(envelope.time.timestamp() * 1e6),
            encode_structured(envelope),
        )
    # The plain JSON snapshots of that release (int keys and tuples did not survive it).
    await tx.execute(
        "INSERT INTO eventbus_events_snapshots (stream_id, version, type, "
        "schema, state) VALUES ($1, $2, $3, $4, $5)",
        "acc-1",
        2,
        "Ledger",
        1,
        json.dumps({"owner": "ada", "balance": 10}).encode(),
    )
    await tx.execute("INSERT INTO eventbus_events_checkpoints (name, position) VALUES ('relay', 1)")


async def _outbox(tx: Transaction, table: str, order_id: str, sent: bool) -> None:
    envelope = _event(OrderPlaced(order_id=order_id), order_id)
    await tx.execute(
        f"INSERT INTO {table} (event_id, topic, stream, partition_key, envelope, created_at, "
        "sent_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        envelope.id,
        "migrate-test.orders",
        order_id,
        order_id,
        encode_structured(envelope),
        time.time(),
        time.time() if sent else None,
    )


async def _the_rest(tx: Transaction) -> None:
    # A projection that had applied position 1, its read model, and a bus-fed id.
    await tx.execute("CREATE TABLE migrated_counts (event TEXT PRIMARY KEY, n INTEGER)")
    await tx.execute("INSERT INTO migrated_counts (event, n) VALUES ('Opened', 1)")
    await tx.execute("INSERT INTO eventbus_projections (name, position) VALUES ('counts', 1)")
    await tx.execute(
        "INSERT INTO eventbus_projection_seen (name, event_id) VALUES ('counts', $1)", V1_SEEN_ID
    )
    # A saga waiting on its second step's reply, overdue at the clock of the test.
    await tx.execute(
        "INSERT INTO eventbus_sagas (saga_id, saga_type, status, step, data, deadline, "
        "to_compensate, compensated, attempts, retry_at, reason, version) VALUES "
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        "o-1",
        "v1-order",
        "running",
        1,
        json.dumps({"total": 42}),
        1_000.0,
        json.dumps([]),
        json.dumps([]),
        0,
        None,
        None,
        2,
    )
    await tx.execute(
        "INSERT INTO eventbus_inbox (key, handled_at) VALUES ($1, $2)",
        idempotency_key(INBOX_TOPIC, INBOX_GROUP, HANDLED.id),
        time.time(),
    )
    await tx.execute(
        "INSERT INTO eventbus_sequences (scope, entity_id, applied) VALUES ('stock', 'sku-1', 3)"
    )
    await tx.execute(
        "INSERT INTO eventbus_sequences_parked (scope, entity_id, sequence, applied, "
        "event_type, event_id, data, parked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        "stock",
        "sku-1",
        2,
        3,
        "test.stock",
        KEPT_STALE_ID,
        "{}",
        time.time(),
    )


async def make_v1(url: str) -> None:
    """Create the release's tables in the database at ``url``, with rows in them."""
    async with await Database.connect(url) as db, db.transaction() as tx:
        for statement in v1_ddl(db.dialect):
            await tx.execute(statement)
        await _events(tx)
        await _outbox(tx, "eventbus_outbox", "sent-by-v1", sent=True)
        await _outbox(tx, "eventbus_outbox", "waiting-since-v1", sent=False)
        await _outbox(tx, SHOP_OUTBOX, "shop-waiting-since-v1", sent=False)
        await _the_rest(tx)


V1_GROUPS = {  # main table -> kind, as `eventbus db migrate` reports them
    "eventbus_events": "event store",
    "eventbus_outbox": "outbox",
    SHOP_OUTBOX: "outbox",
    "eventbus_inbox": "inbox",
    "eventbus_sagas": "saga store",
    "eventbus_sequences": "sequence store",
    "eventbus_projections": "projections",
}
