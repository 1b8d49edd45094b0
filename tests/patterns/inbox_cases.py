"""The inbox's behaviour, shared by the SQLite (tests/patterns) and PostgreSQL
(integration_tests/patterns) runs."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from eventbus import Context, EventBus, RetryPolicy
from eventbus.middleware.base import RedeliveryRequested
from eventbus.patterns.inbox import Inbox
from eventbus.patterns.outbox import Outbox, OutboxRelay
from eventbus.patterns.sql import Database, Transaction
from tests.patterns.outbox_cases import Inbox as Seen
from tests.patterns.outbox_cases import OrderPlaced, ShipOrder, count, memory_url

Next = Callable[[Context], Awaitable[None]]


async def open_inbox(url: str, outbox: bool = False) -> tuple[Database, Inbox]:
    db = await Database.connect(url)
    suffix = uuid.uuid4().hex[:8]
    box = Outbox(db, table=f"eventbus_outbox_{suffix}") if outbox else None
    if box is not None:
        await box.setup()
    inbox = Inbox(db, table=f"eventbus_inbox_{suffix}", outbox=box)
    await inbox.setup()
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE IF NOT EXISTS totals (id TEXT PRIMARY KEY, n INTEGER)")
        await tx.execute("INSERT INTO totals (id, n) VALUES ('orders', 0)")
    return db, inbox


async def total(db: Database) -> int:
    return await count(db, "SELECT n FROM totals WHERE id = 'orders'")


async def check_lost_ack_redelivers_and_applies_once(url: str) -> None:
    """The handler's write commits, then the ack is lost (the process died before
    it): the broker redelivers, and the inbox skips the effect already applied."""
    db, inbox = await open_inbox(url)
    bus = EventBus(memory_url(), source="ledger")
    deliveries: Seen[str] = Seen()
    runs: list[str] = []

    async def lose_first_ack(ctx: Context, call_next: Next) -> None:
        await call_next(ctx)  # the handler's transaction has committed here
        deliveries.add(ctx.envelope.id)
        if len(deliveries.items) == 1:
            raise RedeliveryRequested(0.01, "the consumer died before acknowledging")

    @bus.subscribe(OrderPlaced, group="ledger", middleware=[lose_first_ack])
    @inbox.handler
    async def book(event: OrderPlaced, ctx: Context, tx: Transaction) -> None:
        runs.append(event.order_id)
        await tx.execute("UPDATE totals SET n = n + 1 WHERE id = 'orders'")

    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await deliveries.wait_count(2)
    assert runs == ["o-1"]
    assert await total(db) == 1
    await db.close()


async def check_failed_attempt_leaves_nothing(url: str) -> None:
    """A handler that wrote and then failed is retried from a clean slate: its first
    write rolled back with the inbox record, so the effect is applied once."""
    db, inbox = await open_inbox(url)
    bus = EventBus(memory_url(), source="ledger",
                   retry=RetryPolicy(max_attempts=3, initial_delay=0.0, max_delay=0.0))
    done: Seen[int] = Seen()

    @bus.subscribe(OrderPlaced, group="ledger")
    @inbox.handler
    async def book(event: OrderPlaced, ctx: Context, tx: Transaction) -> None:
        await tx.execute("UPDATE totals SET n = n + 1 WHERE id = 'orders'")
        if ctx.attempt == 1:
            raise RuntimeError("the handler failed after its write")
        done.add(ctx.attempt)

    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        assert await done.wait_count(1) == [2]
    assert await total(db) == 1
    await db.close()


async def check_inbox_and_outbox_share_the_transaction(url: str) -> None:
    """With ``outbox=``, the handler's write, its published command and the handled
    id commit together; a failed attempt drops all three."""
    db, inbox = await open_inbox(url, outbox=True)
    assert inbox.outbox is not None
    bus = EventBus(memory_url(), source="ledger", publish_middleware=[inbox.outbox.middleware],
                   retry=RetryPolicy(max_attempts=3, initial_delay=0.0, max_delay=0.0))
    shipped: Seen[ShipOrder] = Seen()

    @bus.subscribe(OrderPlaced, group="ledger")
    @inbox.handler
    async def book(event: OrderPlaced, ctx: Context, tx: Transaction) -> None:
        await tx.execute("UPDATE totals SET n = n + 1 WHERE id = 'orders'")
        await ctx.send(ShipOrder(order_id=event.order_id))
        if ctx.attempt == 1:
            raise RuntimeError("failed after writing and publishing")

    @bus.subscribe(ShipOrder)
    async def ship(command: ShipOrder) -> None:
        shipped.add(command)

    async with bus, OutboxRelay(inbox.outbox, bus, poll_interval=0.02):
        await bus.publish(OrderPlaced(order_id="o-1"))
        await shipped.wait_count(1)
    assert await total(db) == 1
    assert await count(db, f"SELECT count(*) FROM {inbox.outbox.table}") == 1
    assert await count(db, f"SELECT count(*) FROM {inbox.table}") == 1
    await db.close()
