"""The outbox's behaviour, shared by the SQLite (tests/patterns) and PostgreSQL
(integration_tests/patterns) runs: plain async functions taking a database URL."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pytest

from eventbus import Command, Context, Envelope, Event, EventBus
from eventbus.errors import BrokerConnectionError
from eventbus.middleware.idempotency import MemoryIdempotencyStore
from eventbus.patterns.outbox import Outbox, OutboxRelay
from eventbus.patterns.sql import Database
from tests.bus_support import Inbox, Records, memory_url

WAIT = 10.0
T = TypeVar("T")


class OrderPlaced(Event, type="test.outbox.order-placed", topic="test-outbox-orders", version=1):
    order_id: str
    n: int = 0


class ShipOrder(Command, type="test.outbox.ship-order", topic="test-outbox-ship", version=1):
    order_id: str


async def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    async def poll() -> None:
        while not check():  # noqa: ASYNC110 - the state lives in other tasks' counters
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def open_outbox(url: str) -> tuple[Database, Outbox]:
    db = await Database.connect(url)
    outbox = Outbox(db, table=f"eventbus_outbox_{uuid.uuid4().hex[:8]}")
    await outbox.setup()
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)")
    return db, outbox


def outbox_bus(outbox: Outbox) -> EventBus:
    return EventBus(memory_url(), source="orders", publish_middleware=[outbox.middleware])


async def count(db: Database, sql: str) -> int:
    async with db.transaction() as tx:
        return int(await tx.fetchval(sql))


async def check_state_and_events_commit_together(url: str) -> None:
    """A unit of work's row and its events commit together; a rollback drops both."""
    db, outbox = await open_outbox(url)
    bus = outbox_bus(outbox)
    seen: Inbox[OrderPlaced] = Inbox()

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


async def check_context_publish_goes_to_outbox(url: str) -> None:
    """A handler's ``ctx.publish`` inside a unit of work keeps correlation and waits
    in the outbox until the relay runs."""
    db, outbox = await open_outbox(url)
    bus = outbox_bus(outbox)
    shipped: Inbox[Envelope] = Inbox()

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


async def check_relay_death_republishes_and_consumer_dedupes(url: str) -> None:
    """Rows published but not marked sent (the relay died) go out again; the
    consumer's idempotency middleware runs the handler once per event."""
    db, outbox = await open_outbox(url)
    bus = outbox_bus(outbox)
    deliveries: Counter[str] = Counter()
    handled: Inbox[str] = Inbox()

    async def count_deliveries(ctx: Context, call_next: Callable[[Context], Awaitable[None]]
                               ) -> None:
        deliveries[ctx.envelope.id] += 1
        await call_next(ctx)

    @bus.subscribe(OrderPlaced, group="billing", middleware=[count_deliveries],
                   idempotency=MemoryIdempotencyStore())
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


async def check_two_relays_publish_each_row_once_in_order(url: str, rows: int = 300,
                                                          keys: int = 12) -> None:
    """Two relays on separate connections: every row published exactly once, each
    key's rows in the order they were written."""
    db, outbox = await open_outbox(url)
    bus = outbox_bus(outbox)
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
        second = await Database.connect(url)
        other = Outbox(second, table=outbox.table)
        relays = [OutboxRelay(outbox, bus, batch_size=7, poll_interval=0.01, name="relay-1"),
                  OutboxRelay(other, bus, batch_size=7, poll_interval=0.01, name="relay-2")]
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


async def check_broker_down_backs_off_visibly(url: str) -> None:
    """A relay whose broker is down logs, reports unhealthy, backs off and resumes."""
    db, outbox = await open_outbox(url)
    bus = outbox_bus(outbox)
    seen: Inbox[OrderPlaced] = Inbox()

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
        from eventbus.backoff import Backoff
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


async def check_cleanup_keeps_unsent_and_recent(url: str) -> None:
    """Sent rows older than the retention go; unsent rows and recent sent ones stay."""
    db, outbox = await open_outbox(url)
    bus = outbox_bus(outbox)
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


async def check_stop_finishes_the_batch_in_flight(url: str) -> None:
    """Stopping a relay mid-batch lets the batch commit: its rows are marked sent,
    not published again by the next relay."""
    db, outbox = await open_outbox(url)
    bus = outbox_bus(outbox)
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


async def check_a_refused_row_is_parked_and_holds_only_its_stream(url: str) -> None:
    """A row the broker refuses for good (too large) is parked with the rest of its
    stream behind it; other streams go on; discarding it releases the stream."""
    db, outbox = await open_outbox(url)
    bus = EventBus(f"{memory_url()}?max_message_bytes=4000", source="orders",
                   publish_middleware=[outbox.middleware])
    seen: Inbox[tuple[str, int]] = Inbox()

    @bus.subscribe(OrderPlaced, group="audit")
    async def record(event: OrderPlaced) -> None:
        seen.add((event.order_id[:1], event.n))

    async with bus:
        async with outbox.unit_of_work():
            for key, n, size in (("a", 1, 1), ("b", 1, 1), ("a", 2, 10_000), ("b", 2, 1),
                                 ("a", 3, 1)):
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
