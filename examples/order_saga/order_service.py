"""Order service: places orders and closes the saga, either way.

- publishes ``OrderPlaced`` (the saga's first step, correlation id = the request id)
- on ``InventoryReserved``: marks the order completed, publishes ``OrderCompleted``
- on ``PaymentRefunded`` (the compensation finished): publishes ``OrderCancelled``

Run it alone: ``eventbus run examples.order_saga.order_service:create_bus``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from eventbus import Context, Envelope, EventBus, MemoryIdempotencyStore
from eventbus.patterns.ordering import MemorySequenceStore, Resequencer
from eventbus.patterns.sagas import Choreography
from examples.order_saga.events import (
    InventoryReserved,
    OrderCancelled,
    OrderCompleted,
    OrderEvent,
    OrderLine,
    OrderPlaced,
    PaymentRefunded,
)

SERVICE = "order-service"
OrderStatus = Literal["placed", "completed", "cancelled"]


@dataclass
class Orders:
    """The service's own state: each order's status (a database in real life)."""

    status: dict[str, OrderStatus] = field(default_factory=dict)
    stages: MemorySequenceStore = field(default_factory=MemorySequenceStore)

    async def place(
        self,
        bus: EventBus,
        *,
        order_id: str,
        customer_id: str,
        lines: Sequence[OrderLine],
        request_id: str | None = None,
    ) -> Envelope:
        """Record the order and publish ``OrderPlaced``; ``request_id`` becomes the
        correlation id every later event of this order carries."""
        self.status[order_id] = "placed"
        event = OrderPlaced(
            order_id=order_id,
            customer_id=customer_id,
            lines=list(lines),
            total_cents=sum(line.quantity * line.unit_price_cents for line in lines),
        )
        return await bus.publish(event, key=order_id, correlation_id=request_id)


# How far an order's flow got: an event at or below the stage already applied
# is stale (a late or replayed one) and the guard skips it, so an order is never
# both completed and cancelled.
STAGE: dict[type[OrderEvent], int] = {InventoryReserved: 3, PaymentRefunded: 3}


def register(bus: EventBus, orders: Orders | None = None) -> Orders:
    """Subscribe the order service's handlers on ``bus``; returns its state."""
    orders = orders if orders is not None else Orders()
    bus.publishes(OrderPlaced)  # by Orders.place: the saga's first step (AsyncAPI)
    # The stage jumps (no stage 1 or 2 here): apply across the gap, skip what is stale.
    guard = Resequencer("order-status", orders.stages, on_gap="apply")
    flow = Choreography(
        bus,
        group=SERVICE,
        key=lambda event: event.order_id,
        guard=(guard, lambda event: STAGE[type(event)]),
    )

    @flow.step(InventoryReserved)
    async def complete(event: InventoryReserved, ctx: Context) -> OrderCompleted:
        orders.status[event.order_id] = "completed"
        return OrderCompleted(order_id=event.order_id)

    # The refund ended the compensation: the order is cancelled.
    @flow.step(PaymentRefunded)
    async def cancel(event: PaymentRefunded, ctx: Context) -> OrderCancelled:
        orders.status[event.order_id] = "cancelled"
        return OrderCancelled(order_id=event.order_id, reason=event.reason)

    return orders


def create_bus() -> EventBus:
    """The service as its own process, on ``$EVENTBUS_URL``."""
    bus = EventBus.from_env(source=SERVICE, idempotency=MemoryIdempotencyStore())
    register(bus)
    return bus
