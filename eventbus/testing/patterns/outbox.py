"""The transactional outbox's contract as a suite: what an outbox and its relay must
do on a database, SQLite and PostgreSQL alike, and on a database of your own.

(Over 400 lines on purpose: one contract suite: its cases are read as the outbox's specification.)

An outbox works on a :class:`~eventbus.patterns.sql.Database`; a third-party
backend is another implementation of it (another driver, a database speaking one
of its dialects) or an :class:`~eventbus.patterns.outbox.Outbox` subclass. Subclass
:class:`OutboxSuite` (named ``Test...``) next to an ``outbox_target`` fixture::

    import pytest
    from eventbus.testing.patterns import OutboxSuite, OutboxTarget

    @pytest.fixture
    def outbox_target(tmp_path) -> OutboxTarget:
        url = f"sqlite:///{tmp_path}/app.db"  # a database of its own for every test
        return OutboxTarget("my-db", lambda: MyDatabase.connect(url))

    class TestMyOutbox(OutboxSuite):
        pass

The suite publishes through a private in-memory broker per case; what it tests is
the outbox table, its relay, and (:mod:`~eventbus.testing.patterns.inbox`) the inbox.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import pytest

from eventbus import Command, Context, Envelope, Event, EventBus
from eventbus.backoff import Backoff
from eventbus.errors import BrokerConnectionError
from eventbus.middleware.idempotency import MemoryIdempotencyStore
from eventbus.patterns.inbox import Inbox as InboxPattern
from eventbus.patterns.outbox import Outbox, OutboxRelay
from eventbus.patterns.sql import Database
from eventbus.testing.collector import Collector
from eventbus.testing.patterns._support import WAIT, Records, memory_url, store_case, wait_until

__all__ = [
    "OrderPlaced",
    "OutboxCases",
    "OutboxTarget",
    "ShipOrder",
    "count",
    "open_outbox",
    "outbox_bus",
]


def _outbox(db: Database, table: str) -> Outbox:
    return Outbox(db, table=table)


def _inbox(db: Database, table: str, outbox: Outbox | None) -> InboxPattern:
    return InboxPattern(db, table=table, outbox=outbox)


@dataclass(frozen=True)
class OutboxTarget:
    """The database the outbox (and inbox) under test keep their tables in.

    ``connect()`` opens a handle on this test's database (give every test a database
    or file of its own), each call with its own connection or pool, as another
    process would have; the suite closes it. ``outbox(db, table)`` and
    ``inbox(db, table, outbox)`` build the pattern objects under test (default:
    :class:`~eventbus.patterns.outbox.Outbox` and :class:`~eventbus.patterns.inbox.Inbox`).
    """

    name: str
    connect: Callable[[], Awaitable[Database]]
    outbox: Callable[[Database, str], Outbox] = _outbox
    inbox: Callable[[Database, str, Outbox | None], InboxPattern] = _inbox


class OrderPlaced(Event, type="test.outbox.order-placed", topic="test-outbox-orders", version=1):
    """The suite's event."""

    order_id: str
    n: int = 0


class ShipOrder(Command, type="test.outbox.ship-order", topic="test-outbox-ship", version=1):
    """The suite's command."""

    order_id: str


async def open_outbox(target: OutboxTarget) -> tuple[Database, Outbox]:
    """A database handle and an outbox (set up) on a table of its own, plus the
    ``orders`` table the cases write state to."""
    db = await target.connect()
    outbox = target.outbox(db, f"eventbus_outbox_{uuid.uuid4().hex[:8]}")
    await outbox.setup()
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)")
    return db, outbox


def outbox_bus(outbox: Outbox) -> EventBus:
    """A bus on a private memory broker whose publishes go through ``outbox``."""
    return EventBus(memory_url(), source="orders", publish_middleware=[outbox.middleware])


async def open_outbox_with_bus(target: OutboxTarget) -> tuple[Database, Outbox, EventBus]:
    """:func:`open_outbox`, and an :func:`outbox_bus` publishing through that outbox."""
    db, outbox = await open_outbox(target)
    return db, outbox, outbox_bus(outbox)


async def count(db: Database, sql: str) -> int:
    """The one number ``sql`` selects."""
    async with db.transaction() as tx:
        return int(await tx.fetchval(sql))


def crash_after_publish(bus: EventBus, times: int) -> list[int]:
    """Make the relay die (its task cancelled) right after the broker confirmed,
    before the rows are marked sent, ``times`` times."""
    real = bus.adapter.publish
    crashes = [0]

    async def publish(topic: str, envelopes: Sequence[Envelope]) -> None:
        await real(topic, envelopes)
        if crashes[0] < times:
            crashes[0] += 1
            raise asyncio.CancelledError("the relay process died")

    bus.adapter.publish = publish  # type: ignore[method-assign]
    return crashes


class OutboxCases:
    """The outbox table and its relay, on the target's database."""

    @store_case()
    async def test_state_and_events_commit_together(self, outbox_target: OutboxTarget) -> None:
        """A unit of work's row and its events commit together; a rollback drops both."""
        db, outbox, bus = await open_outbox_with_bus(outbox_target)
        seen: Collector[OrderPlaced] = Collector()

        @bus.subscribe(OrderPlaced, group="billing", start_from="earliest")
        async def record(event: OrderPlaced) -> None:
            seen.add(event)

        async with bus:
            with pytest.raises(RuntimeError):
                async with outbox.unit_of_work() as tx:
                    await tx.execute("INSERT INTO orders (id) VALUES ($1)", "rolled-back")
                    await bus.publish(OrderPlaced(order_id="rolled-back"))
                    raise RuntimeError("the order could not be placed")
            async with outbox.unit_of_work() as tx:
                await tx.execute("INSERT INTO orders (id) VALUES ($1)", "o-1")
                await bus.publish(OrderPlaced(order_id="o-1"), key="o-1")
                await bus.send(ShipOrder(order_id="o-1"), key="o-1")
            # Written, not published: nothing reaches the broker before the relay runs.
            assert await count(db, f"SELECT count(*) FROM {outbox.table}") == 2
            assert await outbox.pending() == 2
            await asyncio.sleep(0.05)
            assert seen.items == []
            assert await count(db, "SELECT count(*) FROM orders WHERE id = 'rolled-back'") == 0
            relay = OutboxRelay(outbox, bus)
            assert await relay.publish_pending() == 2
            assert [e.order_id for e in await seen.wait_count(1, WAIT)] == ["o-1"]
            assert await relay.publish_pending() == 0
            assert await outbox.pending() == 0
            # Outside a unit of work a publish goes straight to the broker.
            await bus.publish(OrderPlaced(order_id="direct"))
            await seen.wait_count(2, WAIT)
            await asyncio.sleep(0.05)
            assert [e.order_id for e in seen.items] == ["o-1", "direct"]
        await db.close()

    @store_case()
    async def test_context_publish_goes_to_outbox(self, outbox_target: OutboxTarget) -> None:
        """A handler's ``ctx.publish`` inside a unit of work keeps correlation and waits
        in the outbox until the relay runs."""
        db, outbox, bus = await open_outbox_with_bus(outbox_target)
        shipped: Collector[Envelope] = Collector()

        @bus.subscribe(OrderPlaced, group="shipping")
        async def ship(event: OrderPlaced, ctx: Context) -> None:
            async with outbox.unit_of_work() as tx:
                await tx.execute("INSERT INTO orders (id) VALUES ($1)", event.order_id)
                await ctx.send(ShipOrder(order_id=event.order_id))

        @bus.subscribe(ShipOrder)
        async def record(command: ShipOrder, ctx: Context) -> None:
            shipped.add(ctx.envelope)

        async with bus, OutboxRelay(outbox, bus, poll_interval=0.05):
            placed = await bus.publish(OrderPlaced(order_id="o-7"))
            (envelope,) = await shipped.wait_count(1, WAIT)
            assert envelope.correlationid == placed.id and envelope.causationid == placed.id
        assert await count(db, "SELECT count(*) FROM orders WHERE id = 'o-7'") == 1
        await db.close()

    @store_case()
    async def test_relay_death_republishes_and_consumer_dedupes(
        self, outbox_target: OutboxTarget
    ) -> None:
        """Rows published but not marked sent (the relay died) go out again; the
        consumer's idempotency middleware runs the handler once per event."""
        db, outbox, bus = await open_outbox_with_bus(outbox_target)
        deliveries: Counter[str] = Counter()
        handled: Collector[str] = Collector()

        async def count_deliveries(
            ctx: Context, call_next: Callable[[Context], Awaitable[None]]
        ) -> None:
            deliveries[ctx.envelope.id] += 1
            await call_next(ctx)

        @bus.subscribe(
            OrderPlaced,
            group="billing",
            middleware=[count_deliveries],
            idempotency=MemoryIdempotencyStore(),
        )
        async def charge(event: OrderPlaced) -> None:
            handled.add(event.order_id)

        async with bus:
            async with outbox.unit_of_work():
                for i in range(3):
                    await bus.publish(OrderPlaced(order_id=f"o-{i}"), key=f"o-{i}")
            crashes = crash_after_publish(bus, times=1)
            dying = asyncio.create_task(OutboxRelay(outbox, bus).publish_pending())
            with pytest.raises(asyncio.CancelledError):
                await dying
            assert crashes[0] == 1
            await wait_until(lambda: sum(deliveries.values()) == 3)
            assert await outbox.pending() == 3  # nothing was marked sent
            assert await OutboxRelay(outbox, bus).publish_pending() == 3  # the restarted relay
            await wait_until(lambda: sum(deliveries.values()) == 6)
            await asyncio.sleep(0.05)
            assert sorted(handled.items) == ["o-0", "o-1", "o-2"]  # once each
            assert set(deliveries.values()) == {2}  # each delivered twice
            assert await outbox.pending() == 0
        await db.close()

    @store_case()
    async def test_two_relays_publish_each_row_once_in_order(
        self, outbox_target: OutboxTarget
    ) -> None:
        """Two relays on separate connections: every row published exactly once, each
        key's rows in the order they were written."""
        rows, keys = 300, 12
        db, outbox, bus = await open_outbox_with_bus(outbox_target)
        got: dict[str, list[int]] = defaultdict(list)
        ids: Counter[str] = Counter()

        @bus.subscribe(OrderPlaced, group="audit", concurrency=4)
        async def record(event: OrderPlaced, ctx: Context) -> None:
            ids[ctx.envelope.id] += 1
            got[event.order_id].append(event.n)

        real = bus.adapter.publish

        async def slow_publish(topic: str, envelopes: Sequence[Envelope]) -> None:
            # Uneven broker latency: a relay that took rows it should not have would
            # overtake the other one and publish a key's rows out of order.
            await asyncio.sleep(random.uniform(0, 0.004))
            await real(topic, envelopes)

        bus.adapter.publish = slow_publish  # type: ignore[method-assign]
        async with bus:
            for start in range(0, rows, 50):
                async with outbox.unit_of_work():
                    for n in range(start, min(rows, start + 50)):
                        key = f"k{n % keys}"
                        await bus.publish(OrderPlaced(order_id=key, n=n), key=key)
            second = await outbox_target.connect()
            other = outbox_target.outbox(second, outbox.table)
            relays = [
                OutboxRelay(outbox, bus, batch_size=7, poll_interval=0.01, name="relay-1"),
                OutboxRelay(other, bus, batch_size=7, poll_interval=0.01, name="relay-2"),
            ]
            async with relays[0], relays[1]:
                await wait_until(lambda: sum(ids.values()) >= rows)
                await asyncio.sleep(0.1)  # a double publish would arrive now
            await second.close()
            assert len(ids) == rows and set(ids.values()) == {1}, "a row was published twice"
            for key, numbers in got.items():
                assert numbers == sorted(numbers), f"{key} out of order: {numbers}"
            published = [r.health().published for r in relays]
            assert sum(published) == rows
        await db.close()

    @store_case()
    async def test_broker_down_backs_off_visibly(self, outbox_target: OutboxTarget) -> None:
        """A relay whose broker is down logs, reports unhealthy, backs off and resumes."""
        db, outbox, bus = await open_outbox_with_bus(outbox_target)
        seen: Collector[OrderPlaced] = Collector()

        @bus.subscribe(OrderPlaced, group="billing")
        async def record(event: OrderPlaced) -> None:
            seen.add(event)

        real = bus.adapter.publish
        down = asyncio.Event()
        down.set()

        async def flaky(topic: str, envelopes: Sequence[Envelope]) -> None:
            if down.is_set():
                raise BrokerConnectionError("memory broker is down (test)")
            await real(topic, envelopes)

        bus.adapter.publish = flaky  # type: ignore[method-assign]
        async with bus:
            async with outbox.unit_of_work():
                await bus.publish(OrderPlaced(order_id="o-1"))
            relay = OutboxRelay(outbox, bus, poll_interval=0.01)
            relay.backoff = Backoff(initial=0.01, max_delay=0.05)
            with Records("eventbus.outbox") as logs:
                async with relay:
                    await wait_until(lambda: relay.health().consecutive_failures >= 2)
                    health = relay.health()
                    assert not health.ok and health.state == "backing_off"
                    assert "memory broker is down" in (health.last_error or "")
                    assert any("batch failed" in m for m in logs.messages(logging.WARNING))
                    down.clear()
                    await seen.wait_count(1, WAIT)
                    await wait_until(lambda: relay.health().ok)
                assert relay.health().state == "stopped" and not relay.health().ok
        await db.close()

    @store_case()
    async def test_cleanup_keeps_unsent_and_recent(self, outbox_target: OutboxTarget) -> None:
        """Sent rows older than the retention go; unsent rows and recent sent ones stay."""
        db, outbox, bus = await open_outbox_with_bus(outbox_target)
        async with bus:
            async with outbox.unit_of_work():
                await bus.publish(OrderPlaced(order_id="a"))
                await bus.publish(OrderPlaced(order_id="b"))
            keep = OutboxRelay(outbox, bus, retention=3600)
            assert await keep.publish_pending() == 2
            assert await keep.cleanup() == 0
            async with outbox.unit_of_work():
                await bus.publish(OrderPlaced(order_id="c"))
            assert await OutboxRelay(outbox, bus, retention=0).cleanup() == 2
            assert await count(db, f"SELECT count(*) FROM {outbox.table}") == 1
            assert await outbox.pending() == 1
        await db.close()

    @store_case()
    async def test_stop_finishes_the_batch_in_flight(self, outbox_target: OutboxTarget) -> None:
        """Stopping a relay mid-batch lets the batch commit: its rows are marked sent,
        not published again by the next relay."""
        db, outbox, bus = await open_outbox_with_bus(outbox_target)
        real = bus.adapter.publish
        publishing = asyncio.Event()

        async def slow(topic: str, envelopes: Sequence[Envelope]) -> None:
            publishing.set()
            await asyncio.sleep(0.2)
            await real(topic, envelopes)

        bus.adapter.publish = slow  # type: ignore[method-assign]
        async with bus:
            async with outbox.unit_of_work():
                await bus.publish(OrderPlaced(order_id="a"))
            relay = OutboxRelay(outbox, bus)
            await relay.start()
            await asyncio.wait_for(publishing.wait(), WAIT)
            await relay.stop()
            assert relay.health().state == "stopped" and relay.health().published == 1
            assert await outbox.pending() == 0
        await db.close()

    @store_case()
    async def test_a_refused_row_is_parked_and_holds_only_its_stream(
        self, outbox_target: OutboxTarget
    ) -> None:
        """A row the broker refuses for good (too large) is parked with the rest of its
        stream behind it; other streams go on; discarding it releases the stream."""
        db, outbox = await open_outbox(outbox_target)
        bus = EventBus(
            f"{memory_url()}?max_message_bytes=4000",
            source="orders",
            publish_middleware=[outbox.middleware],
        )
        seen: Collector[tuple[str, int]] = Collector()

        @bus.subscribe(OrderPlaced, group="audit")
        async def record(event: OrderPlaced) -> None:
            seen.add((event.order_id[:1], event.n))

        async with bus:
            async with outbox.unit_of_work():
                for key, n, size in (
                    ("a", 1, 1),
                    ("b", 1, 1),
                    ("a", 2, 10_000),
                    ("b", 2, 1),
                    ("a", 3, 1),
                ):
                    await bus.publish(OrderPlaced(order_id=key * size, n=n), key=key)
            relay = OutboxRelay(outbox, bus)
            with Records("eventbus.outbox") as logs:
                assert await relay.publish_pending() == 3
                ((seq, _, error),) = await outbox.failed()
                assert "MessageTooLargeError" in error
                assert await outbox.pending() == 2  # the parked row and the one behind it
                assert await relay.publish_pending() == 0  # stream "a" waits ...
                refusals = [m for m in logs.messages(logging.ERROR) if f"row {seq} " in m]
                assert len(refusals) == 1  # ... without trying the parked row again
                assert await outbox.retry_failed(seq)
                assert await relay.publish_pending() == 0  # tried, refused again
                assert len([m for m in logs.messages(logging.ERROR) if f"row {seq} " in m]) == 2
            assert await outbox.discard(seq)
            assert await relay.publish_pending() == 1
            await seen.wait_count(4, WAIT)
        assert sorted(seen.items) == [("a", 1), ("a", 3), ("b", 1), ("b", 2)]
        assert [n for key, n in seen.items if key == "a"] == [1, 3]
        assert await outbox.pending() == 0
        await db.close()
