"""The outbox relay under faults: a broker refusing a row for good, a broker that does
not answer, a relay that died holding rows (part of
:class:`~eventbus.testing.patterns.OutboxSuite`)."""

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
from eventbus.patterns.outbox import OutboxRelay
from eventbus.testing.collector import Collector
from eventbus.testing.patterns._support import WAIT, memory_url, store_case, wait_until
from eventbus.testing.patterns.outbox import (
    OrderPlaced,
    OutboxTarget,
    open_outbox,
    open_outbox_with_bus,
)

__all__ = ["PERMANENT", "RelayFaultCases"]

PERMANENT: list[Exception] = [
    MessageTooLargeError("over the broker's limit"),
    TopicNotFoundError("no such topic"),
    ConfigurationError("'acme corp' is not a valid subject"),
    InvalidURLError("bad option"),
    DecodeError("not a CloudEvent"),
    UnsupportedOperationError("the broker cannot do that"),
]
"""Refusals a broker gives for good: each parks its row instead of being retried."""


def billed_orders(bus: EventBus) -> Collector[str]:
    """The order ids ``bus``'s ``billing`` group handles, as they arrive."""
    seen: Collector[str] = Collector()

    @bus.subscribe(OrderPlaced, group="billing")
    async def record(event: OrderPlaced) -> None:
        seen.add(event.order_id)

    return seen


class RelayFaultCases:
    """The relay when the broker refuses or stalls, and when a relay dies."""

    @pytest.mark.parametrize("refusal", PERMANENT, ids=lambda e: type(e).__name__)
    @store_case()
    async def test_a_permanent_refusal_parks_only_its_row(
        self, outbox_target: OutboxTarget, refusal: Exception
    ) -> None:
        """Whatever the broker refuses for good (not only "too large") is parked with its
        stream behind it; other keys go out (defect 11)."""
        db, outbox, bus = await open_outbox_with_bus(outbox_target)
        seen = billed_orders(bus)

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

    @store_case()
    async def test_an_unresponsive_broker_blocks_no_database_write(
        self, outbox_target: OutboxTarget
    ) -> None:
        """The relay publishes outside any transaction: while the broker does not answer,
        the application's own units of work go on at once (defect 12)."""
        db, outbox = await open_outbox(outbox_target)
        bus = EventBus(
            memory_url(),
            source="orders",
            publish_timeout=3.0,
            publish_middleware=[outbox.middleware],
        )
        seen = billed_orders(bus)

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

    @store_case()
    async def test_a_dead_relays_claim_comes_back_after_its_lease(
        self, outbox_target: OutboxTarget
    ) -> None:
        """Rows claimed by a relay that died (it never marked or released them) wait for
        the claim's lease, then any relay takes them (defect 12)."""
        db, outbox, bus = await open_outbox_with_bus(outbox_target)
        seen = billed_orders(bus)

        async with bus:
            async with outbox.unit_of_work():
                await bus.publish(OrderPlaced(order_id="o-1"), key="o-1")
                await bus.publish(OrderPlaced(order_id="o-2"), key="o-2")
            # What a relay killed after claiming leaves behind: its lease, nothing else.
            async with db.transaction() as tx:
                await tx.execute(
                    f"UPDATE {outbox.table} SET claimed_by = 'dead-relay', "
                    "claimed_until = $1 WHERE partition_key = 'o-1'",
                    time.time() + 0.5,
                )
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
