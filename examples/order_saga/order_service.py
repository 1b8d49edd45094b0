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
from examples.order_saga.events import (
    InventoryReserved,
    OrderCancelled,
    OrderCompleted,
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


def register(bus: EventBus, orders: Orders | None = None) -> Orders:
    """Subscribe the order service's handlers on ``bus``; returns its state."""
    orders = orders if orders is not None else Orders()

    # "earliest": a group created after events were published still sees them.
    @bus.subscribe(InventoryReserved, group=SERVICE, start_from="earliest")
    async def complete(event: InventoryReserved, ctx: Context) -> None:
        orders.status[event.order_id] = "completed"
        await ctx.publish(OrderCompleted(order_id=event.order_id), key=event.order_id)

    @bus.subscribe(PaymentRefunded, group=SERVICE, start_from="earliest")
    async def cancel(event: PaymentRefunded, ctx: Context) -> None:
        orders.status[event.order_id] = "cancelled"
        await ctx.publish(
            OrderCancelled(order_id=event.order_id, reason=event.reason), key=event.order_id
        )

    return orders


def create_bus() -> EventBus:
    """The service as its own process, on ``$EVENTBUS_URL``."""
    bus = EventBus.from_env(source=SERVICE, idempotency=MemoryIdempotencyStore())
    register(bus)
    return bus
