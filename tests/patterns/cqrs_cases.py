"""Projections' behaviour, shared by SQLite (tests/patterns) and PostgreSQL
(integration_tests/patterns): each check takes a database URL and opens its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from eventbus import Event, EventBus
from eventbus.events import Message
from eventbus.patterns.cqrs import Projection
from eventbus.patterns.eventsourcing import SQLEventStore, StoredEvent
from eventbus.patterns.sql import Database, SQLError, Transaction

# The simulated crash (a trigger refusing the checkpoint write) surfaces as one of
# sql.py's errors on both databases.
CRASH = SQLError


class ItemAdded(Event, type="cqrs-test.item-added", topic="cqrs-test.items"):
    order_id: str
    qty: int


class Noted(Event, type="cqrs-test.noted", topic="cqrs-test.items"):
    text: str


class Totals(Projection):
    """Per order: the quantity and the number of lines, summed (so a double
    application shows)."""

    handles = (ItemAdded,)

    async def create_tables(self, tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS cqrs_totals (order_id TEXT PRIMARY KEY, "
                         "qty BIGINT NOT NULL, lines BIGINT NOT NULL)")

    async def clear(self, tx: Transaction) -> None:
        await tx.execute("DELETE FROM cqrs_totals")

    async def apply(self, event: Message, tx: Transaction) -> None:
        assert isinstance(event, ItemAdded)
        await tx.execute(
            "INSERT INTO cqrs_totals (order_id, qty, lines) VALUES ($1, $2, 1) "
            "ON CONFLICT (order_id) DO UPDATE SET qty = cqrs_totals.qty + excluded.qty, "
            "lines = cqrs_totals.lines + 1", event.order_id, event.qty)


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[tuple[Database, SQLEventStore, Totals]]:
    db = await Database.connect(url)
    store = SQLEventStore(db)
    await store.setup()
    totals = Totals(db, name="totals", poll_interval=0.05)
    await totals.setup()
    try:
        yield db, store, totals
    finally:
        await totals.stop()
        await db.close()


async def add(store: SQLEventStore, order: str, *qtys: int) -> list[StoredEvent]:
    bus = EventBus(source="test")
    return await store.append(
        order, [bus.envelope_for(ItemAdded(order_id=order, qty=q), parent=None) for q in qtys],
        None)


async def read(db: Database) -> dict[str, tuple[int, int]]:
    async with db.transaction() as tx:
        rows = await tx.fetch("SELECT order_id, qty, lines FROM cqrs_totals ORDER BY order_id")
    return {row[0]: (int(row[1]), int(row[2])) for row in rows}


async def crash_on(db: Database, table: str, when: str) -> None:
    """A trigger aborting writes to ``table`` when ``when`` holds: the process
    'dies' after the read model was written and before the transaction commits."""
    async with db.transaction() as tx:
        if db.dialect == "sqlite":
            await tx.execute(
                f"CREATE TRIGGER crash BEFORE {'UPDATE' if 'position' in when else 'INSERT'} "
                f"ON {table} WHEN {when} BEGIN SELECT RAISE(ABORT, 'simulated crash'); END")
        else:
            await tx.execute("CREATE OR REPLACE FUNCTION crash() RETURNS trigger AS $$ "
                             "BEGIN RAISE EXCEPTION 'simulated crash'; END $$ LANGUAGE plpgsql")
            await tx.execute(
                f"CREATE TRIGGER crash BEFORE {'UPDATE' if 'position' in when else 'INSERT'} "
                f"ON {table} FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION crash()")


async def recover(db: Database, table: str) -> None:
    async with db.transaction() as tx:
        await tx.execute("DROP TRIGGER crash" + ("" if db.dialect == "sqlite" else f" ON {table}"))


async def check_catch_up_and_read_your_write(url: str) -> None:
    """Events in the store reach the read model; wait_until(position) returns once the
    model includes a write just made, while the projection follows the store."""
    async with opened(url) as (db, store, totals):
        await add(store, "a", 1, 2)
        await store.append("n", [EventBus().envelope_for(Noted(text="x"), parent=None)], None)
        assert await totals.catch_up(store) == 2  # the Noted event is skipped, not applied
        assert await read(db) == {"a": (3, 2)}
        assert await totals.position() == 3
        await totals.start(store)
        written = await add(store, "b", 5)
        await totals.wait_until(written[-1].position, timeout=5)
        assert await read(db) == {"a": (3, 2), "b": (5, 1)}
        assert totals.health().ok and totals.health().position >= written[-1].position
        with pytest.raises(TimeoutError):
            await totals.wait_until(written[-1].position + 1, timeout=0.2)


async def check_crash_between_write_and_checkpoint(url: str) -> None:
    """The process dies after the read model was written and before the checkpoint
    committed: on restart the event is applied once, not twice (the read model and
    the checkpoint commit together)."""
    async with opened(url) as (db, store, totals):
        await add(store, "a", 1, 1, 1, 1, 1)
        totals.batch = 1
        await crash_on(db, "eventbus_projections", "NEW.position >= 3")
        with pytest.raises(CRASH, match="simulated crash"):
            await totals.catch_up(store)
        await recover(db, "eventbus_projections")
        restarted = Totals(db, name="totals")
        await restarted.catch_up(store)
        assert await read(db) == {"a": (5, 5)}, "an event was applied twice (or lost)"
        assert await restarted.position() == 5


async def check_concurrent_projectors_apply_once(url: str) -> None:
    """Two projectors of one name catching up at once (two processes) apply each
    event once: the checkpoint is locked and re-read in the applying transaction."""
    async with opened(url) as (db, store, _):
        for order in "abcd":
            await add(store, order, 1, 2, 3)
        twins = [Totals(db, name="totals", batch=2) for _ in range(3)]
        await asyncio.gather(*(t.catch_up(store) for t in twins))
        assert await read(db) == {o: (6, 3) for o in "abcd"}, "an event was applied twice"


async def check_rebuild_from_zero(url: str) -> None:
    """rebuild() clears the read model and replays the whole store into it."""
    async with opened(url) as (db, store, totals):
        await add(store, "a", 1, 2)
        await add(store, "b", 4)
        await totals.catch_up(store)
        async with db.transaction() as tx:  # a read model gone wrong (a bug since fixed)
            await tx.execute("UPDATE cqrs_totals SET qty = 99")
            await tx.execute("INSERT INTO cqrs_totals VALUES ('ghost', 1, 1)")
        assert await totals.rebuild(store) == 3
        assert await read(db) == {"a": (3, 2), "b": (4, 1)}
        assert await totals.position() == 3


async def check_bus_fed_once_per_event_id(url: str) -> None:
    """From the bus: a redelivered event (same id) is applied once, also when the
    first run crashed after writing the read model; wait_for_event reads your write."""
    async with opened(url) as (db, _, totals):
        bus = EventBus("memory://", source=f"cqrs-{uuid.uuid4().hex[:8]}")
        totals.subscribe(bus, ItemAdded)
        async with bus:
            sent = await bus.publish(ItemAdded(order_id="a", qty=2))
            await bus.publish_envelopes(ItemAdded.default_topic(), [sent])  # a redelivery
            await totals.wait_for_event(sent.id, timeout=5)
            again = await bus.publish(ItemAdded(order_id="a", qty=1))
            await totals.wait_for_event(again.id, timeout=5)
        assert await read(db) == {"a": (3, 2)}
        crashing = bus.envelope_for(ItemAdded(order_id="c", qty=7), parent=None)
        await crash_on(db, "eventbus_projection_seen", "NEW.event_id <> ''")
        with pytest.raises(CRASH, match="simulated crash"):
            await totals.handle(crashing)
        await recover(db, "eventbus_projection_seen")
        assert await totals.handle(crashing) is True
        assert await totals.handle(crashing) is False
        assert (await read(db))["c"] == (7, 1)


async def check_shop_example(url: str) -> None:
    """examples/cqrs_shop: commands over request/reply change the event-sourced
    orders; the denormalized read model shows each write to its writer at once, a
    rejected command comes back as RequestFailedError, and a rebuild from zero
    gives the same read model."""
    from examples.cqrs_shop.app import open_shop
    from examples.cqrs_shop.demo import shop_day
    from examples.cqrs_shop.events import AddItem, PlaceOrder

    async with open_shop(url) as shop:
        assert await shop_day(shop) == [
            "read model: OrderSummary(order_id='o-1', customer='ada', status='confirmed', "
            "items=3, total_cents=1200)",
            "rejected: OrderRejected: order o-1 is confirmed; no more items",
            "ada: (1, 1200) (orders, cents)",
        ]
        await shop.execute(PlaceOrder(order_id="o-2", customer="bob"))
        accepted = await shop.execute(AddItem(order_id="o-2", sku="pie", qty=4, price_cents=5))
        assert accepted.version == 2
        summary = await shop.summaries.order("o-2")  # read right after the write
        assert summary is not None and (summary.items, summary.total_cents) == (4, 20)
        async with shop.summaries.db.transaction() as tx:
            before = await tx.fetch("SELECT * FROM shop_order_summaries ORDER BY order_id")
        await shop.summaries.stop()
        await shop.summaries.rebuild(shop.store)
        async with shop.summaries.db.transaction() as tx:
            after = await tx.fetch("SELECT * FROM shop_order_summaries ORDER BY order_id")
        assert after == before and len(after) == 2
