"""Choreography helpers, on the order saga's services: a step's business failure
publishes the compensating event, a compensation answers it, and a stale event
for an order that already ended is skipped by the order service's guard."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from eventbus import Context, EventBus  # noqa: E402
from eventbus.patterns.sagas import Choreography, StepFailedError  # noqa: E402
from eventbus.testing import TestBus  # noqa: E402
from examples.order_saga import inventory_service, order_service, payment_service  # noqa: E402
from examples.order_saga.events import (  # noqa: E402
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderCompleted,
    OrderLine,
    PaymentCharged,
    PaymentRefunded,
)


def _services() -> tuple[list[EventBus], order_service.Orders, payment_service.Ledger]:
    buses = [EventBus(source=name) for name in ("order", "payment", "inventory")]
    orders = order_service.register(buses[0])
    ledger = payment_service.register(buses[1])
    inventory_service.register(buses[2])
    return buses, orders, ledger


@pytest.mark.asyncio
async def test_a_failed_step_compensates_and_a_late_success_is_skipped() -> None:
    buses, orders, ledger = _services()
    order_id = f"ord-{uuid.uuid4().hex[:6]}"
    lamp = [OrderLine(sku="lamp", quantity=1, unit_price_cents=4500)]
    async with TestBus(*buses) as tb:
        await orders.place(buses[0], order_id=order_id, customer_id="c", lines=lamp)
        await tb.drain()
        assert orders.status[order_id] == "cancelled" and ledger.charges[order_id].refunded
        [failed] = tb.published(InventoryReservationFailed)
        assert failed.reason.startswith("out of stock: lamp")
        assert len(tb.published(PaymentRefunded)) == 1
        # A reservation that turns up after the order was cancelled (a replayed or
        # late event) is stale: the order stays cancelled, nothing is completed.
        await buses[2].publish(
            InventoryReserved(order_id=order_id, reservation_id="r-late"), key=order_id
        )
        await tb.drain()
    assert orders.status[order_id] == "cancelled"
    assert tb.published(OrderCompleted) == []
    assert [e.order_id for e in tb.published(OrderCancelled)] == [order_id]


@pytest.mark.asyncio
async def test_steps_publish_what_they_return_keyed_and_caused_by_the_trigger() -> None:
    bus = EventBus(source="svc")
    flow = Choreography(bus, group="svc", key=lambda e: e.order_id)

    @flow.step(PaymentCharged)
    async def react(event: PaymentCharged, ctx: Context) -> list[InventoryReserved]:
        return [
            InventoryReserved(order_id=event.order_id, reservation_id=f"r{i}") for i in range(2)
        ]

    @flow.step(InventoryReservationFailed)
    async def no_failure_event(event: InventoryReservationFailed, ctx: Context) -> None:
        raise StepFailedError("nothing to publish for this one")

    async with TestBus(bus) as tb:
        sent = await bus.publish(
            PaymentCharged(order_id="o1", payment_id="p", amount_cents=1, lines=[])
        )
        await bus.publish(InventoryReservationFailed(order_id="o2", reason="x"))
        await tb.drain()
        envelopes = [
            e for e in tb.published_envelopes() if e.type == InventoryReserved.event_type()
        ]
    assert [e.partitionkey for e in envelopes] == ["o1", "o1"]
    assert all(e.causationid == sent.id and e.correlationid == sent.id for e in envelopes)
    # A StepFailedError with no failure event declared is an error like any other: dead-lettered.
    assert len(tb.dead_lettered(InventoryReservationFailed)) == 1


@pytest.mark.asyncio
async def test_a_topic_map_gives_the_flow_its_own_topics_and_dispatches_by_type() -> None:
    run = uuid.uuid4().hex[:6]
    bus = EventBus(source="svc")
    flow = Choreography(
        bus, group="svc", key=lambda e: e.order_id, topic=lambda cls: f"{cls.default_topic()}-{run}"
    )
    seen: list[str] = []

    @flow.step(InventoryReserved)
    async def reserved(event: InventoryReserved, ctx: Context) -> OrderCompleted:
        seen.append("reserved")
        return OrderCompleted(order_id=event.order_id)

    @flow.step(InventoryReservationFailed)
    async def failed(event: InventoryReservationFailed, ctx: Context) -> None:
        seen.append("failed")

    async with TestBus(bus) as tb:
        await bus.publish(
            InventoryReserved(order_id="o1", reservation_id="r"), topic=f"inventory-{run}"
        )
        await bus.publish(
            InventoryReservationFailed(order_id="o2", reason="x"), topic=f"inventory-{run}"
        )
        await tb.drain()
    assert seen == ["reserved", "failed"]
    assert [e.type for e in tb.published_envelopes(f"orders-{run}")] == [
        OrderCompleted.event_type()
    ]


@pytest.mark.asyncio
async def test_with_an_inbox_a_redelivered_event_is_handled_once(tmp_path: Path) -> None:
    from eventbus.errors import ConfigurationError
    from eventbus.patterns.inbox import Inbox
    from eventbus.patterns.outbox import Outbox
    from eventbus.patterns.sagas import transaction_of
    from eventbus.patterns.sql import Database

    async with await Database.connect(f"sqlite:///{tmp_path / 'svc.db'}") as db:
        outbox = Outbox(db)
        inbox = Inbox(db, outbox=outbox)
        await outbox.setup()
        await inbox.setup()
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE refunds (order_id TEXT NOT NULL)")
        bus = EventBus(source="payments", publish_middleware=[outbox.middleware])
        with pytest.raises(ConfigurationError):
            Choreography(bus, group="x", inbox=inbox, unit_of_work=outbox.unit_of_work)
        flow = Choreography(bus, group="payments", key=lambda e: e.order_id, inbox=inbox)

        @flow.compensation(InventoryReservationFailed)
        async def refund(event: InventoryReservationFailed, ctx: Context) -> PaymentRefunded:
            tx = transaction_of(ctx)
            assert tx is not None
            await tx.execute("INSERT INTO refunds (order_id) VALUES ($1)", event.order_id)
            return PaymentRefunded(
                order_id=event.order_id, payment_id="p", amount_cents=1, reason=event.reason
            )

        async with TestBus(bus) as tb:
            failed = bus.envelope_for(InventoryReservationFailed(order_id="o1", reason="x"))
            for _ in range(2):  # the same envelope twice: a redelivery
                await bus.publish_envelopes(InventoryReservationFailed.default_topic(), [failed])
            await tb.drain()
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT count(*) FROM refunds") == 1
        assert await outbox.pending() == 1  # one PaymentRefunded, in the same transaction
        assert tb.dead_lettered() == []  # the duplicate was skipped, not failed
