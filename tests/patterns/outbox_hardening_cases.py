"""The outbox relay under refusals, an unresponsive broker, dead relays and an old
table (issue #19, defects 11, 12 and 15), shared by the SQLite (tests/patterns) and
PostgreSQL (integration_tests/patterns) runs: plain async functions taking a URL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from eventbus import Envelope, EventBus
from eventbus.errors import (
    ConfigurationError,
    DecodeError,
    InvalidURLError,
    MessageTooLargeError,
    TopicNotFoundError,
    UnsupportedOperationError,
)
from eventbus.patterns.outbox import Outbox, OutboxRelay
from eventbus.patterns.schema import TableSchemaError
from tests.bus_support import Inbox, memory_url
from tests.patterns.outbox_cases import WAIT, OrderPlaced, open_outbox, outbox_bus, wait_until

PERMANENT: list[Exception] = [
    MessageTooLargeError("over the broker's limit"),
    TopicNotFoundError("no such topic"),
    ConfigurationError("'acme corp' is not a valid subject"),
    InvalidURLError("bad option"),
    DecodeError("not a CloudEvent"),
    UnsupportedOperationError("the broker cannot do that"),
]


async def check_a_permanent_refusal_parks_only_its_row(url: str, refusal: Exception) -> None:
    """Whatever the broker refuses for good (not only "too large") is parked with its
    stream behind it; other keys go out (defect 11)."""
    db, outbox = await open_outbox(url)
    bus = outbox_bus(outbox)
    seen: Inbox[str] = Inbox()

    @bus.subscribe(OrderPlaced, group="billing")
    async def record(event: OrderPlaced) -> None:
        seen.add(event.order_id)

    real = bus.adapter.publish

    async def refusing(topic: str, envelopes: Sequence[Envelope]) -> None:
        if topic == "bad topic":
            raise refusal
        await real(topic, envelopes)

    bus.adapter.publish = refusing  # type: ignore[method-assign]
    async with bus:
        async with outbox.unit_of_work():
            await bus.publish(OrderPlaced(order_id="t-1"), topic="bad topic", key="t-1")
            await bus.publish(OrderPlaced(order_id="t-1b"), key="t-1")  # behind it
            await bus.publish(OrderPlaced(order_id="o-2"), key="o-2")
        relay = OutboxRelay(outbox, bus)
        assert await relay.publish_pending() == 1
        assert await seen.wait_count(1, WAIT) == ["o-2"]
        ((_, _, error),) = await outbox.failed()
        assert type(refusal).__name__ in error
        assert await relay.publish_pending() == 0 and await outbox.pending() == 2
    await db.close()


async def check_an_unresponsive_broker_blocks_no_database_write(url: str) -> None:
    """The relay publishes outside any transaction: while the broker does not answer,
    the application's own units of work go on at once (defect 12)."""
    db, outbox = await open_outbox(url)
    bus = EventBus(memory_url(), source="orders", publish_timeout=3.0,
                   publish_middleware=[outbox.middleware])
    seen: Inbox[str] = Inbox()

    @bus.subscribe(OrderPlaced, group="billing")
    async def record(event: OrderPlaced) -> None:
        seen.add(event.order_id)

    real = bus.adapter.publish
    calls: list[str] = []
    answering = asyncio.Event()

    async def unresponsive(topic: str, envelopes: Sequence[Envelope]) -> None:
        calls.append(topic)
        await answering.wait()  # accepts the connection, confirms nothing until told
        await real(topic, envelopes)

    bus.adapter.publish = unresponsive  # type: ignore[method-assign]
    async with bus:
        async with outbox.unit_of_work():
            await bus.publish(OrderPlaced(order_id="o-1"), key="o-1")
        async with OutboxRelay(outbox, bus, poll_interval=0.01):
            await wait_until(lambda: bool(calls))  # the relay waits on the broker now
            started = time.monotonic()
            async with outbox.unit_of_work() as tx:
                await tx.execute("INSERT INTO orders (id) VALUES ($1)", "o-2")
                await bus.publish(OrderPlaced(order_id="o-2"), key="o-2")
            took = time.monotonic() - started
            answering.set()
            await seen.wait_count(2, WAIT)
    assert took < 1.0, f"a unit of work waited {took:.2f}s for the relay's broker call"
    assert sorted(seen.items) == ["o-1", "o-2"]
    await db.close()


async def check_a_dead_relays_claim_comes_back_after_its_lease(url: str) -> None:
    """Rows claimed by a relay that died (it never marked or released them) wait for
    the claim's lease, then any relay takes them (defect 12)."""
    db, outbox = await open_outbox(url)
    bus = outbox_bus(outbox)
    seen: Inbox[str] = Inbox()

    @bus.subscribe(OrderPlaced, group="billing")
    async def record(event: OrderPlaced) -> None:
        seen.add(event.order_id)

    async with bus:
        async with outbox.unit_of_work():
            await bus.publish(OrderPlaced(order_id="o-1"), key="o-1")
            await bus.publish(OrderPlaced(order_id="o-2"), key="o-2")
        # What a relay killed after claiming leaves behind: its lease, nothing else.
        async with db.transaction() as tx:
            await tx.execute(f"UPDATE {outbox.table} SET claimed_by = 'dead-relay', "
                             "claimed_until = $1 WHERE partition_key = 'o-1'", time.time() + 0.5)
        relay = OutboxRelay(outbox, bus)
        assert await relay.publish_pending() == 1  # o-2 only: o-1 is still claimed
        assert await seen.wait_count(1, WAIT) == ["o-2"]
        deadline = time.monotonic() + WAIT
        while not await relay.publish_pending():
            assert time.monotonic() < deadline, "the dead relay's claim never expired"
            await asyncio.sleep(0.05)
        await seen.wait_count(2, WAIT)
    assert await outbox.pending() == 0
    await db.close()


def old_outbox_ddl(dialect: str, table: str) -> list[str]:
    """Outbox.setup() as released before the parked-row columns (4129f27^)."""
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


async def check_an_outbox_table_of_an_earlier_release_is_upgraded(url: str) -> None:
    """setup() on a table the previous release made adds the columns it lacks; its
    waiting rows and new ones are relayed (defect 15). A table that is no outbox at
    all is refused, naming it."""
    db, fresh = await open_outbox(url)
    table = f"{fresh.table}_old"
    async with db.transaction() as tx:
        for statement in old_outbox_ddl(db.dialect, table):
            await tx.execute(statement)
    outbox = Outbox(db, table=table)
    bus = outbox_bus(outbox)
    seen: Inbox[str] = Inbox()

    @bus.subscribe(OrderPlaced, group="billing")
    async def record(event: OrderPlaced) -> None:
        seen.add(event.order_id)

    async with bus:
        async with outbox.unit_of_work():  # written by the old release, not yet relayed
            await bus.publish(OrderPlaced(order_id="o-1"))
        await asyncio.gather(outbox.setup(), Outbox(db, table=table).setup())
        async with outbox.unit_of_work():
            await bus.publish(OrderPlaced(order_id="o-2"))
        assert await OutboxRelay(outbox, bus).publish_pending() == 2
        await seen.wait_count(2, WAIT)
    async with db.transaction() as tx:
        await tx.execute(f"CREATE TABLE {table}_foreign (seq INTEGER, note TEXT)")
    with pytest.raises(TableSchemaError, match=f"{table}_foreign.*envelope"):
        await Outbox(db, table=f"{table}_foreign").setup()
    await db.close()

