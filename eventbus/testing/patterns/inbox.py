"""The inbox's contract (part of :class:`~eventbus.testing.patterns.OutboxSuite`, on
the same ``outbox_target``): a handler's writes and the handled id commit together."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from eventbus import Context, EventBus, RetryPolicy
from eventbus.middleware.base import RedeliveryRequested
from eventbus.patterns.inbox import Inbox
from eventbus.patterns.outbox import OutboxRelay
from eventbus.patterns.sql import Database, Transaction
from eventbus.testing.collector import Collector
from eventbus.testing.patterns._support import memory_url, store_case
from eventbus.testing.patterns.outbox import OrderPlaced, OutboxTarget, ShipOrder, count

__all__ = ["InboxCases"]

Next = Callable[[Context], Awaitable[None]]


async def open_inbox(target: OutboxTarget, outbox: bool = False) -> tuple[Database, Inbox]:
    """A database handle and an inbox (with an outbox on ``outbox=True``) on tables of
    their own, plus a ``totals`` table the handlers write to."""
    db = await target.connect()
    suffix = uuid.uuid4().hex[:8]
    box = target.outbox(db, f"eventbus_outbox_{suffix}") if outbox else None
    if box is not None:
        await box.setup()
    inbox = target.inbox(db, f"eventbus_inbox_{suffix}", box)
    await inbox.setup()
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE IF NOT EXISTS totals (id TEXT PRIMARY KEY, n INTEGER)")
        await tx.execute("INSERT INTO totals (id, n) VALUES ('orders', 0)")
    return db, inbox


def retrying_ledger(**options: Any) -> EventBus:
    """The ``ledger`` service's bus on the memory broker, retrying a failed handler at
    once (three attempts in all); ``options`` go to :class:`EventBus` too."""
    return EventBus(
        memory_url(),
        source="ledger",
        retry=RetryPolicy(max_attempts=3, initial_delay=0.0, max_delay=0.0),
        **options,
    )


async def total(db: Database) -> int:
    """The handlers' running total."""
    return await count(db, "SELECT n FROM totals WHERE id = 'orders'")


class InboxCases:
    """The inbox, on the target's database."""

    @store_case()
    async def test_lost_ack_redelivers_and_applies_once(self, outbox_target: OutboxTarget) -> None:
        """The handler's write commits, then the ack is lost (the process died before
        it): the broker redelivers, and the inbox skips the effect already applied."""
        db, inbox = await open_inbox(outbox_target)
        bus = EventBus(memory_url(), source="ledger")
        deliveries: Collector[str] = Collector()
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

    @store_case()
    async def test_failed_attempt_leaves_nothing(self, outbox_target: OutboxTarget) -> None:
        """A handler that wrote and then failed is retried from a clean slate: its first
        write rolled back with the inbox record, so the effect is applied once."""
        db, inbox = await open_inbox(outbox_target)
        bus = retrying_ledger()
        done: Collector[int] = Collector()

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

    @store_case()
    async def test_inbox_and_outbox_share_the_transaction(
        self, outbox_target: OutboxTarget
    ) -> None:
        """With ``outbox=``, the handler's write, its published command and the handled
        id commit together; a failed attempt drops all three."""
        db, inbox = await open_inbox(outbox_target, outbox=True)
        assert inbox.outbox is not None
        bus = retrying_ledger(publish_middleware=[inbox.outbox.middleware])
        shipped: Collector[ShipOrder] = Collector()

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
