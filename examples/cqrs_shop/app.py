"""Wiring: one database holds the event store (write model) and the read model; the
command handlers answer requests over the bus; the projection follows the store.

A client sends a command with ``bus.request``, gets :class:`Accepted` with the store
position of what it wrote, and waits for the read model to include that position
before reading: it always sees its own write, though the read side is eventually
consistent for everyone else.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from eventbus import Command, EventBus, RetryPolicy
from eventbus.patterns.eventsourcing import EventStore, MemoryEventStore, SQLEventStore
from eventbus.patterns.sql import Database
from examples.cqrs_shop.events import Accepted
from examples.cqrs_shop.read_model import OrderSummaries
from examples.cqrs_shop.write_model import OrderRejectedError, order_commands


@dataclass
class Shop:
    bus: EventBus
    store: SQLEventStore
    summaries: OrderSummaries

    async def execute(self, command: Command, timeout: float = 10.0) -> Accepted:
        """Send ``command``, wait for its reply and for the read model to catch up."""
        accepted = await self.bus.request(command, timeout=timeout, reply_type=Accepted)
        await self.summaries.wait_until(accepted.position, timeout=timeout)
        return accepted


def create_bus(bus_url: str | None = None, store: EventStore | None = None) -> EventBus:
    """The shop's bus on ``bus_url`` (default ``$EVENTBUS_URL``), answering its commands
    from ``store`` (an in-memory one when none: enough to describe the service, as
    ``eventbus asyncapi examples.cqrs_shop.app:create_bus`` does)."""
    bus = EventBus(bus_url or os.environ.get("EVENTBUS_URL") or "memory://", source="shop")
    # A rejection is the order's answer, not a glitch: no retries, straight to the
    # error reply (and the dead-letter queue, where every failed command goes).
    order_commands(store or MemoryEventStore()).serve(
        bus, retry=RetryPolicy(give_up_on=(OrderRejectedError,))
    )
    return bus


@asynccontextmanager
async def open_shop(database_url: str, bus_url: str = "memory://") -> AsyncIterator[Shop]:
    """The shop on ``database_url`` (``sqlite:///...`` or ``postgresql://...``)."""
    db = await Database.connect(database_url)
    store = SQLEventStore(db)
    await store.setup()
    summaries = OrderSummaries(db, name="shop-order-summaries", poll_interval=0.2)
    await summaries.setup()
    bus = create_bus(bus_url, store)
    try:
        async with bus:
            await summaries.start(store)
            yield Shop(bus, store, summaries)
    finally:
        await summaries.stop()
        await db.close()
