"""Projections' behaviour, shared by SQLite (tests/patterns) and PostgreSQL
(integration_tests/patterns): each check takes a database URL and opens its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from eventbus import Event, EventBus
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.events import Message
from eventbus.patterns.cqrs import Projection
from eventbus.patterns.eventsourcing import SQLEventStore, StoredEvent
from eventbus.patterns.sql import Database, SQLError, Transaction, UniqueViolationError

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
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS cqrs_totals (order_id TEXT PRIMARY KEY, "
            "qty BIGINT NOT NULL, lines BIGINT NOT NULL)"
        )

    async def clear(self, tx: Transaction) -> None:
        await tx.execute("DELETE FROM cqrs_totals")

    async def apply(self, event: Message, tx: Transaction) -> None:
        assert isinstance(event, ItemAdded)
        await tx.execute(
            "INSERT INTO cqrs_totals (order_id, qty, lines) VALUES ($1, $2, 1) "
            "ON CONFLICT (order_id) DO UPDATE SET qty = cqrs_totals.qty + excluded.qty, "
            "lines = cqrs_totals.lines + 1",
            event.order_id,
            event.qty,
        )


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
        order, [bus.envelope_for(ItemAdded(order_id=order, qty=q), parent=None) for q in qtys], None
    )


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
                f"ON {table} WHEN {when} BEGIN SELECT RAISE(ABORT, 'simulated crash'); END"
            )
        else:
            await tx.execute(
                "CREATE OR REPLACE FUNCTION crash() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'simulated crash'; END $$ LANGUAGE plpgsql"
            )
            await tx.execute(
                f"CREATE TRIGGER crash BEFORE {'UPDATE' if 'position' in when else 'INSERT'} "
                f"ON {table} FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION crash()"
            )


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
        # The id is recorded first, then the read model written: the crash comes
        # after both, before the commit.
        await crash_on(db, "cqrs_totals", "NEW.order_id = 'c'")
        with pytest.raises(CRASH, match="simulated crash"):
            await totals.handle(crashing)
        await recover(db, "cqrs_totals")
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
            "rejected: OrderRejectedError: order o-1 is confirmed; no more items",
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


class PausingStore:
    """The store as a slow projector sees it: ``read_all`` returns a page, then the
    projector stalls until ``go`` is set (a second process that read before a rebuild)."""

    def __init__(self, store: SQLEventStore) -> None:
        self.store = store
        self.read = asyncio.Event()
        self.go = asyncio.Event()

    async def read_all(self, after: int = 0, limit: int = 500) -> list[StoredEvent]:
        page = await self.store.read_all(after, limit)
        if page and not self.read.is_set():
            self.read.set()
            await self.go.wait()
        return page


class SlowClear(Totals):
    """clear() lets the stalled projector go on and takes a while, as a DELETE of a
    large read model does: the stalled one reaches the checkpoint's lock meanwhile."""

    resume: asyncio.Event | None = None

    async def clear(self, tx: Transaction) -> None:
        await super().clear(tx)
        if self.resume is not None:
            self.resume.set()
            await asyncio.sleep(0.3)


async def check_rebuild_fences_a_stale_projector(url: str) -> None:
    """Defect 1: a projector of the same name that read its page before a rebuild
    reset the checkpoint cannot apply that page afterwards (compare-and-set on the
    checkpoint, and the rebuild's new generation): the rebuilt model holds every
    event exactly once."""
    async with opened(url) as (db, store, totals):
        for n in range(10):
            await add(store, f"o{n % 3}", n + 1)
        await totals.catch_up(store)
        await add(store, "o1", 100)
        await add(store, "o2", 200)
        expected = {
            "o0": (1 + 4 + 7 + 10, 4),
            "o1": (2 + 5 + 8 + 100, 4),
            "o2": (3 + 6 + 9 + 200, 4),
        }
        slow = PausingStore(store)
        other = Totals(db, name="totals")
        stale = asyncio.create_task(other.catch_up(slow))  # reads 11..12, then stalls
        await slow.read.wait()
        rebuilding = SlowClear(db, name="totals")
        rebuilding.resume = slow.go
        await rebuilding.rebuild(store)
        await stale
        await rebuilding.wait_until(await store.last_position(), timeout=5)
        assert await read(db) == expected, "the rebuild lost or doubled events"
        assert await rebuilding.position() == 12


class Emails(Projection):
    """A read model with its own unique constraint (a projection bug: a second user
    with the same address should be an upsert)."""

    handles = (ItemAdded,)

    async def create_tables(self, tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS cqrs_unique (order_id TEXT PRIMARY KEY)")

    async def apply(self, event: Message, tx: Transaction) -> None:
        assert isinstance(event, ItemAdded)
        await tx.execute("INSERT INTO cqrs_unique VALUES ($1)", event.order_id)


async def check_bus_fed_apply_failure_is_not_swallowed(url: str) -> None:
    """Defect 8: a unique violation raised by apply() itself is a failure of the
    handler (the bus retries, then dead-letters), not "a twin got here first": the
    event is not acknowledged as applied. A real redelivery still returns False."""
    async with await Database.connect(url) as db:
        view = Emails(db, name="emails")
        await view.setup()
        bus = EventBus(source="test")
        first = bus.envelope_for(ItemAdded(order_id="a", qty=1), parent=None)
        clash = bus.envelope_for(ItemAdded(order_id="a", qty=2), parent=None)
        assert await view.handle(first) is True
        assert await view.handle(first) is False  # a redelivery
        with pytest.raises(UniqueViolationError):
            await view.handle(clash)
        async with db.transaction() as tx:
            seen = await tx.fetchval(
                "SELECT count(*) FROM eventbus_projection_seen WHERE event_id = $1", clash.id
            )
        assert seen == 0, "the failed event was recorded as applied"


class Fragile(Totals):
    """Totals whose apply() fails for order "bug" until fixed."""

    fixed = False

    async def apply(self, event: Message, tx: Transaction) -> None:
        assert isinstance(event, ItemAdded)
        if event.order_id == "bug" and not self.fixed:
            raise ValueError("cannot project order 'bug'")
        await super().apply(event, tx)


class Everything(Totals):
    """Reads every event type, the retired one too (skipping all but ItemAdded)."""

    handles = ()

    async def apply(self, event: Message, tx: Transaction) -> None:
        if isinstance(event, ItemAdded):
            await super().apply(event, tx)


async def check_failing_events_are_parked(url: str) -> None:
    """Defect 10: a stored event that cannot be decoded, or whose apply() keeps
    failing, no longer stops the projection for every stream: it is parked (health
    counts it), its stream's later events wait behind it, the other streams go on;
    an operator retries it once fixed, or skips it."""
    async with opened(url) as (db, store, _):
        legacy = Envelope.create(type="cqrs-test.retired", source="old", data=b"{}")
        await store.append("legacy", [legacy], 0)  # 1: undecodable
        await add(store, "bug", 1)  # 2: apply() fails
        await add(store, "ok", 5)  # 3
        await add(store, "bug", 2)  # 4: held behind 2
        view = Fragile(db, name="fragile", park_after=2, poll_interval=0.05)
        await view.setup()
        with pytest.raises(ValueError, match="bug"):
            await view.catch_up(store)  # attempt 1 of 2
        assert await view.catch_up(store) == 1  # parks 2, applies 3
        assert await read(db) == {"ok": (5, 1)}
        assert await view.position() == 4
        await view.start(store)
        last = await add(store, "ok", 6)
        await view.wait_until(last[-1].position, timeout=5)
        assert view.health().ok and view.health().parked == 2
        parked = await view.parked()
        assert [(p.position, p.stream_id, p.held_by) for p in parked] == [
            (2, "bug", None),
            (4, "bug", 2),
        ]
        assert "cannot project order 'bug'" in parked[0].error
        with pytest.raises(ConfigurationError, match="waits behind position 2"):
            await view.retry_parked(4)
        with pytest.raises(ValueError):
            await view.retry_parked(2)  # not fixed yet
        assert [p.position for p in await view.parked()] == [2, 4]
        view.fixed = True
        assert await view.retry_parked(2) == 2  # it, then 4, in order
        assert await read(db) == {"bug": (3, 2), "ok": (11, 2)}
        await view.stop()
        undecodable = Everything(db, name="everything")
        await undecodable.setup()
        await undecodable.catch_up(store)  # parked at once
        assert [p.position for p in await undecodable.parked()] == [1]
        assert await undecodable.skip_parked(1) == 0
        assert await undecodable.parked() == []


async def check_seen_ids_pruned_by_age(url: str) -> None:
    """Defect 18: the bus-fed projection's seen ids carry the time they were seen
    and cleanup(older_than) forgets the old ones (as Collector.cleanup does)."""
    async with opened(url) as (_, _, totals):
        bus = EventBus(source="test")
        sent = [bus.envelope_for(ItemAdded(order_id="a", qty=1), parent=None) for _ in range(3)]
        for envelope in sent:
            assert await totals.handle(envelope)
        assert await totals.cleanup(older_than=3600) == 0
        await asyncio.sleep(0.05)
        assert await totals.cleanup(older_than=0.01) == 3
        assert await totals.handle(sent[0]) is True  # forgotten: applied again
